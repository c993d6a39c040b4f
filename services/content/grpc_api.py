"""gRPC transport of the content service: the same use cases as REST."""
from __future__ import annotations


from govmedia.content.v1 import content_pb2 as pb
from govmedia.content.v1 import content_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.db import iso
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.runtime import Runtime

from . import usecases
from .models import Draft, DraftIn, RetractIn, Revision, source_message, targets_message

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContentService"].full_name
STATUSES = ("draft", "in_review", "approved", "rejected", "retracted")




def _draft_in(fields: pb.DraftFields) -> DraftIn:
    values: dict = {"title": fields.title, "subtitle": fields.subtitle, "body": fields.body,
                    "cover_url": fields.cover_url, "category": fields.category}
    if fields.HasField("source"):
        values["source"] = {"name": fields.source.name, "url": fields.source.url}
    if fields.HasField("targets"):
        t = fields.targets
        values["targets"] = {name: list(getattr(t, name)) for name in ("regions", "platforms", "accounts")
                             if getattr(t, name)}
        if t.all:
            values["targets"]["scope"] = "all"
    return parse_request(DraftIn, **values)


def _fields(content: dict) -> pb.DraftFields:
    return pb.DraftFields(
        title=content["title"], subtitle=content["subtitle"] or "", body=content["body"],
        cover_url=content["cover_url"] or "", category=content["category"] or "",
        source=source_message(content["source"]), targets=targets_message(content["targets"]),
    )


def _draft(d: Draft) -> pb.Draft:
    return pb.Draft(
        id=d.id, unit_id=d.unit_id, author_id=d.author_id, version=d.version, status=d.status,
        fields=_fields(d.content()), created_at=iso(d.created_at), updated_at=iso(d.updated_at),
        review_comment=d.review_comment or "", retract_reason=d.retract_reason or "",
    )


def _revision(r: Revision) -> pb.Revision:
    return pb.Revision(version=r.version, editor_id=r.editor_id, created_at=iso(r.created_at), changed=r.changed,
                       fields=_fields(r.snapshot))


class ContentServicer(pb_grpc.ContentServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context):
        return await grpc_principal(context, self.rt.verifier)

    @grpc_errors
    async def CreateDraft(self, request, context):
        who = await self._who(context)
        return _draft(await usecases.create_draft(self.rt, who, _draft_in(request.fields)))

    @grpc_errors
    async def GetDraft(self, request, context):
        who = await self._who(context)
        return _draft(await usecases.get_draft(self.rt, who, request.id))

    @grpc_errors
    async def ListDrafts(self, request, context):
        who = await self._who(context)
        if request.status and request.status not in STATUSES:
            raise invalid("validation_failed", "请求参数不合法", [{"field": "status", "problem": f"one of {STATUSES}"}])
        items, nxt = await usecases.list_drafts(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                request.status or None)
        return pb.DraftList(items=[_draft(d) for d in items], next_cursor=nxt or "")

    @grpc_errors
    async def UpdateDraft(self, request, context):
        who = await self._who(context)
        draft = await usecases.update_draft(self.rt, who, request.id, request.if_match or None,
                                            _draft_in(request.fields))
        return _draft(draft)

    @grpc_errors
    async def SubmitDraft(self, request, context):
        who = await self._who(context)
        return _draft(await usecases.submit_draft(self.rt, who, request.id))

    @grpc_errors
    async def ListRevisions(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_revisions(self.rt, who, request.id, page_limit(request.limit),
                                                   request.cursor or None)
        return pb.RevisionList(items=[_revision(r) for r in items], next_cursor=nxt or "")

    @grpc_errors
    async def RetractItem(self, request, context):
        who = await self._who(context)
        data = parse_request(RetractIn, reason=request.reason)
        return _draft(await usecases.retract_item(self.rt, who, request.id, data.reason))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_ContentServiceServicer_to_server(ContentServicer(rt), server)

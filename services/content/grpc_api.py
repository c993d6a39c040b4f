"""gRPC transport of the content service: the same use cases as REST."""
from __future__ import annotations

import json
from typing import get_args

from govmedia.content.v1 import content_pb2 as pb
from govmedia.content.v1 import content_pb2_grpc as pb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import grpc_principal
from govmedia_kit.db import iso
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.public import admit_grpc
from govmedia_kit.runtime import Runtime

from . import attachments, clues, library, usecases
from .clues_models import Clue, ClueCreate, ClueDraftIn, CluePublic, ClueStatus, ClueTriage
from .library import LibraryItem, LibraryQuery, ReprintIn
from .models import (
    Draft, DraftCreate, DraftIn, RetractIn, Revision, attachment_message, source_message, targets_message,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ContentService"].full_name
STATUSES = ("draft", "in_review", "approved", "rejected", "retracted")
CLUE_STATUSES = get_args(ClueStatus)


def _targets(t: ev.Targets) -> dict:
    values = {name: list(getattr(t, name)) for name in ("regions", "platforms", "accounts", "unit_kinds")
              if getattr(t, name)}
    if t.all:
        values["scope"] = "all"
    return values


def _draft_in(fields: pb.DraftFields, model=DraftIn) -> DraftIn:
    values: dict = {"title": fields.title, "subtitle": fields.subtitle, "body": fields.body,
                    "cover_url": fields.cover_url, "category": fields.category, "urgent": fields.urgent,
                    "publish_at": fields.publish_at}
    if fields.HasField("source"):
        values["source"] = {"name": fields.source.name, "url": fields.source.url}
    if fields.HasField("targets"):
        values["targets"] = _targets(fields.targets)
    if model is DraftCreate:
        values["reprint"] = fields.reprint
    return parse_request(model, **values)


def _fields(content: dict) -> pb.DraftFields:
    return pb.DraftFields(
        title=content["title"], subtitle=content["subtitle"] or "", body=content["body"],
        cover_url=content["cover_url"] or "", category=content["category"] or "",
        source=source_message(content["source"]), targets=targets_message(content["targets"]),
        urgent=content["urgent"], publish_at=content["publish_at"] or "",
    )


def _draft(d: Draft) -> pb.Draft:
    return pb.Draft(
        id=d.id, unit_id=d.unit_id, author_id=d.author_id, version=d.version, status=d.status,
        fields=_fields(d.content()), created_at=iso(d.created_at), updated_at=iso(d.updated_at),
        review_comment=d.review_comment or "", retract_reason=d.retract_reason or "",
        attachments=[attachment_message(a) for a in d.attachments], reprint=d.is_reprint,
        original_title=d.original_title or "", reprint_of=d.reprint_of or "", reprint_count=d.reprint_count,
        clue_id=d.clue_id or "", approved_at=iso(d.approved_at) or "",
        review_decisions=[ev.LevelDecision(**{**r, "comment": r["comment"] or ""}) for r in d.review_decisions],
    )


def _diff(d: dict) -> pb.Diff:
    changes = []
    for c in d["changes"]:
        change = pb.FieldChange(field=c["field"])
        if c["hunks"] is None:
            change.before_json = json.dumps(c["before"], ensure_ascii=False)
            change.after_json = json.dumps(c["after"], ensure_ascii=False)
        else:
            change.hunks.extend(pb.LineHunk(
                op=h["op"], before_start=h["before_start"], before_end=h["before_end"],
                after_start=h["after_start"], after_end=h["after_end"], before=h["before"], after=h["after"],
                lines=[pb.LinePair(before=p["before"], after=p["after"], chars=[pb.CharOp(**op) for op in p["chars"]])
                       for p in h["lines"]]) for h in c["hunks"])
        changes.append(change)
    return pb.Diff(draft_id=d["draft_id"], from_version=d["from"], to_version=d["to"],
                   from_editor_id=d["from_editor_id"], from_created_at=d["from_created_at"],
                   to_editor_id=d["to_editor_id"], to_created_at=d["to_created_at"], changes=changes)


def _library_item(item: LibraryItem) -> pb.LibraryItem:
    return pb.LibraryItem(
        id=item.id, unit_id=item.unit_id, unit_name=item.unit_name or "", version=item.version, title=item.title,
        subtitle=item.subtitle or "", excerpt=item.excerpt, body=item.body or "", category=item.category or "",
        cover_url=item.cover_url or "", source=source_message(item.source),
        attachments=[attachment_message(a) for a in item.attachments], reprint_of=item.reprint_of or "",
        reprint_count=item.reprint_count, approved_at=item.approved_at or "")


def _clue(c: CluePublic) -> pb.Clue:
    msg = pb.Clue(
        id=c.id, unit_id=c.unit_id, title=c.title, content=c.content, location=c.location or "",
        contact_revealed=c.contact_revealed, status=c.status, decline_reason=c.decline_reason or "",
        duplicate_of=c.duplicate_of or "", draft_id=c.draft_id or "", triaged_by=c.triaged_by or "",
        triaged_at=c.triaged_at or "", drafted_by=c.drafted_by or "", drafted_at=c.drafted_at or "",
        created_at=c.created_at, updated_at=c.updated_at,
        steps=[pb.ClueStep(at=e.at, actor_id=e.actor_id, actor_name=e.actor_name, action=e.action, note=e.note)
               for e in c.steps or []])
    if c.contact:
        msg.contact.CopyFrom(pb.Contact(name=c.contact.name or "", phone=c.contact.phone or ""))
    return msg


def _clue_of(rt, who, c: Clue, steps=None) -> pb.Clue:
    return _clue(clues.view(rt, c, clues.reveals_contact(who, c), steps))


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
        return _draft(await usecases.create_draft(self.rt, who, _draft_in(request.fields, DraftCreate)))

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


    @grpc_errors
    async def GetDraftAudit(self, request, context):
        who = await self._who(context)
        cursor = int(request.cursor) if request.cursor.isdigit() else None
        items, nxt = await usecases.draft_audit(self.rt, who, request.id, page_limit(request.limit), cursor)
        return pb.AuditEntries(stream_id=request.id, next_cursor=str(nxt) if nxt is not None else "", items=[
            pb.AuditEntry(seq=e.seq, action=e.action, actor=e.actor, at=e.at, prev_hash=e.prev_hash, hash=e.hash,
                          before_json=json.dumps(e.before, ensure_ascii=False) if e.before is not None else "",
                          after_json=json.dumps(e.after, ensure_ascii=False) if e.after is not None else "")
            for e in items])

    @grpc_errors
    async def VerifyDraftAudit(self, request, context):
        result = await usecases.draft_audit_verify(self.rt, await self._who(context), request.id)
        broken = result.first_broken or {}
        return pb.AuditVerification(stream_id=result.stream_id, ok=result.ok, entries=result.entries,
                                    first_broken_seq=broken.get("seq", 0), first_broken_reason=broken.get("reason", ""))

    @grpc_errors
    async def DiffRevisions(self, request, context):
        who = await self._who(context)
        return _diff(await usecases.diff_revisions(self.rt, who, request.id, request.from_version,
                                                   request.to_version))

    # --- attachments (the upload itself is REST only: see the proto) ---

    @grpc_errors
    async def ListAttachments(self, request, context):
        who = await self._who(context)
        items = await attachments.list_attachments(self.rt, who, request.id)
        return pb.AttachmentList(items=[attachment_message(a.meta()) for a in items])

    @grpc_errors
    async def GetAttachment(self, request, context):
        # Matrix clients too: they read the attachments of approved items.
        who = await grpc_principal(context, self.rt.verifier, allow_clients=True)
        attachment, _ = await attachments.get_attachment(self.rt, who, request.id)
        return attachment_message(attachment.meta())

    @grpc_errors
    async def DeleteAttachment(self, request, context):
        who = await self._who(context)
        return _draft(await attachments.remove_attachment(self.rt, who, request.draft_id, request.attachment_id,
                                                          request.if_match or None))

    # --- the cloud library ---

    @grpc_errors
    async def ListLibrary(self, request, context):
        who = await self._who(context)
        query = parse_request(LibraryQuery, q=request.q, category=request.category, region=request.region,
                              since=request.approved_from, until=request.approved_to)
        items, nxt = await library.list_library(self.rt, who, query, page_limit(request.limit),
                                                request.cursor or None)
        return pb.LibraryList(items=[_library_item(i) for i in items], next_cursor=nxt or "")

    @grpc_errors
    async def GetLibraryItem(self, request, context):
        who = await self._who(context)
        return _library_item(await library.get_library_item(self.rt, who, request.id))

    @grpc_errors
    async def ReprintItem(self, request, context):
        who = await self._who(context)
        data = parse_request(ReprintIn, targets=_targets(request.targets) if request.HasField("targets") else None)
        return _draft(await library.reprint(self.rt, who, request.item_id, data))

    # --- news clues ---

    @grpc_errors
    async def SubmitClue(self, request, context):
        """Public intake, no token; limited by the client address (trusted proxies' x-forwarded-for)."""
        admit_grpc(self.rt, context, self.rt.state["clue_intake_limiter"])
        contact = None
        if request.HasField("contact") and (request.contact.name or request.contact.phone):
            contact = {"name": request.contact.name, "phone": request.contact.phone}
        data = parse_request(ClueCreate, unit_id=request.unit_id, title=request.title, content=request.content,
                             location=request.location or None, contact=contact)
        clue = await clues.submit_clue(self.rt, data)
        return pb.ClueReceipt(tracking_code=clue.tracking_code, status=clue.status, created_at=iso(clue.created_at))

    @grpc_errors
    async def TrackClue(self, request, context):
        admit_grpc(self.rt, context, self.rt.state["clue_track_limiter"])
        clue, unit_name = await clues.track_clue(self.rt, request.tracking_code[:64])
        return pb.ClueTrack(tracking_code=clue.tracking_code, status=clue.status, unit_name=unit_name or "",
                            created_at=iso(clue.created_at), updated_at=iso(clue.updated_at))

    @grpc_errors
    async def ListClues(self, request, context):
        who = await self._who(context)
        if request.status and request.status not in CLUE_STATUSES:
            raise invalid("validation_failed", "请求参数不合法",
                          [{"field": "status", "problem": f"one of {CLUE_STATUSES}"}])
        items, nxt = await clues.list_clues(self.rt, who, page_limit(request.limit), request.cursor or None,
                                            request.status or None)
        return pb.ClueList(items=[_clue(clues.view(self.rt, c)) for c in items], next_cursor=nxt or "")

    @grpc_errors
    async def GetClue(self, request, context):
        who = await self._who(context)
        clue, reveal, steps = await clues.get_clue(self.rt, who, request.id)
        return _clue(clues.view(self.rt, clue, reveal, steps))

    @grpc_errors
    async def TriageClue(self, request, context):
        who = await self._who(context)
        data = parse_request(ClueTriage, decision=request.decision, reason=request.reason or None,
                             duplicate_of=request.duplicate_of or None)
        return _clue_of(self.rt, who, await clues.triage_clue(self.rt, who, request.id, data))

    @grpc_errors
    async def DraftFromClue(self, request, context):
        who = await self._who(context)
        data = parse_request(ClueDraftIn, title=request.title or None, body=request.body or None,
                             targets=_targets(request.targets) if request.HasField("targets") else None)
        _, draft = await clues.draft_from_clue(self.rt, who, request.id, data)
        return _draft(draft)


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_ContentServiceServicer_to_server(ContentServicer(rt), server)

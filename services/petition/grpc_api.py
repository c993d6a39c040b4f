"""gRPC transport of the petition service: the same use cases as REST."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia.petition.v1 import petition_import_pb2 as import_pb
from govmedia.petition.v1 import petition_import_pb2_grpc as import_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.public import admit_grpc
from govmedia_kit.runtime import Runtime

from . import imports, open311_keys, usecases
from .domain import CITIZEN_ACTIONS, STAFF_ACTIONS
from .models import (
    ActionIn, Category, CommentImport, HotlineImport, ImportReceipt, Open311KeyIn, Open311KeyPublic, PetitionCreate,
    PetitionPublic, PetitionStatus, SlaPublic, Status,
)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PetitionService"].full_name
IMPORT_SERVICE_NAME = import_pb.DESCRIPTOR.services_by_name["PetitionImportService"].full_name


class ListFilters(BaseModel):
    model_config = {"extra": "forbid"}
    status: Status | None = None
    category: Category | None = None


class StaffAct(BaseModel):
    action: Literal[STAFF_ACTIONS]  # type: ignore[valid-type]


class CitizenAct(BaseModel):
    action: Literal[CITIZEN_ACTIONS]  # type: ignore[valid-type]


def _sla(s: SlaPublic) -> pb.Sla:
    return pb.Sla(policy=s.policy, stage=s.stage, due_at=s.due_at, warn_at=s.warn_at, paused=s.paused,
                  policy_version=s.policy_version, running=s.running, overdue=s.overdue,
                  time_left_s=s.time_left_s or 0, calendar=s.calendar)


def _petition(p: PetitionPublic) -> pb.Petition:
    msg = pb.Petition(id=p.id, category=p.category, title=p.title, content=p.content, channel=p.channel,
                      location=p.location or "", status=p.status, sla=_sla(p.sla), created_at=p.created_at,
                      unit_id=p.unit_id or "", desk_unit_id=p.desk_unit_id or "", answer=p.answer or "",
                      duplicate_of=p.duplicate_of or "", actions=p.actions, rating=p.rating or 0,
                      recheck_level=p.recheck_level, extension_days=p.extension_days)
    if p.contact:
        msg.contact.CopyFrom(pb.Contact(name=p.contact.get("name") or "", phone=p.contact.get("phone") or "",
                                        id_number=p.contact.get("id_number") or ""))
    return msg


def _tracked(t: PetitionStatus) -> pb.TrackedPetition:
    return pb.TrackedPetition(tracking_code=t.tracking_code, status=t.status, category=t.category,
                              created_at=t.created_at, sla=_sla(t.sla), answer=t.answer or "",
                              decline_reason=t.decline_reason or "", redirect_to=t.redirect_to or "",
                              extension_reason=t.extension_reason or "", rating=t.rating or 0,
                              can_recheck=t.can_recheck)


class PetitionServicer(pb_grpc.PetitionServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context):
        return await grpc_principal(context, self.rt.verifier)

    @grpc_errors
    async def CreatePetition(self, request, context):
        """Public intake, no token; limited by the client address (trusted proxies' x-forwarded-for)."""
        admit_grpc(self.rt, context, self.rt.state["intake_limiter"])
        data = parse_request(PetitionCreate, category=request.category, title=request.title, content=request.content,
                             channel=request.channel, contact=_contact(request), location=request.location or None)
        r = usecases.receipt(await usecases.public_intake(self.rt, data))
        # As REST's receipt: never whether the case was linked to an earlier one.
        return pb.Petition(id=r.id, tracking_code=r.tracking_code, category=r.category, status=r.status,
                           sla=_sla(r.sla), created_at=r.created_at)

    @grpc_errors
    async def ListPetitions(self, request, context):
        who = await self._who(context)
        filters = parse_request(ListFilters, status=request.status or None, category=request.category or None)
        items, nxt = await usecases.list_petitions(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                   filters.status, filters.category, request.unit_id or None,
                                                   request.overdue or None)
        return pb.PetitionList(items=[_petition(usecases.public_view(self.rt, p, who)) for p in items],
                               next_cursor=nxt or "")

    @grpc_errors
    async def GetPetition(self, request, context):
        who = await self._who(context)
        return _petition(await usecases.get_petition(self.rt, who, request.id))

    @grpc_errors
    async def Act(self, request, context):
        who = await self._who(context)
        action = parse_request(StaffAct, action=request.action).action
        body = parse_request(ActionIn, note=request.note or None, reason=request.reason or None,
                             redirect_to=request.redirect_to or None, unit_id=request.unit_id or None,
                             answer=request.answer or None, days=request.days or None,
                             decision=request.decision or None)
        return _petition(await usecases.act(self.rt, who, request.id, action, body))

    @grpc_errors
    async def GetTimeline(self, request, context):
        who = await self._who(context)
        entries = await usecases.petition_timeline(self.rt, who, request.id)
        return pb.Timeline(items=[pb.TimelineEntry(at=usecases.local_iso(e.at), actor=e.actor, action=e.action,
                                                   note=e.note) for e in entries])

    @grpc_errors
    async def Track(self, request, context):
        admit_grpc(self.rt, context, self.rt.state["track_limiter"])
        return _tracked(await usecases.track_petition(self.rt, request.tracking_code))

    @grpc_errors
    async def CitizenAct(self, request, context):
        admit_grpc(self.rt, context, self.rt.state["track_limiter"])
        action = parse_request(CitizenAct, action=request.action).action
        body = parse_request(ActionIn, rating=request.rating or None, note=request.note or None,
                             reason=request.reason or None)
        return _tracked(await usecases.citizen_act(self.rt, request.tracking_code, action, body))

    @grpc_errors
    async def CreateOpen311Key(self, request, context):
        who = await self._who(context)
        body = parse_request(Open311KeyIn, name=request.name, scopes=list(request.scopes))
        return _open311_key(await open311_keys.create_key(self.rt, who, body))

    @grpc_errors
    async def ListOpen311Keys(self, request, context):
        who = await self._who(context)
        return pb.Open311KeyList(items=[_open311_key(k) for k in await open311_keys.list_keys(self.rt, who)])

    @grpc_errors
    async def RevokeOpen311Key(self, request, context):
        who = await self._who(context)
        return _open311_key(await open311_keys.revoke_key(self.rt, who, request.id))


def _open311_key(k: Open311KeyPublic) -> pb.Open311Key:
    return pb.Open311Key(id=k.id, name=k.name, prefix=k.prefix, scopes=k.scopes, created_by=k.created_by,
                         created_at=k.created_at, revoked_at=k.revoked_at or "", revoked_by=k.revoked_by or "",
                         key=k.key or "")


def _contact(request) -> dict | None:
    if request.HasField("contact") and (request.contact.name or request.contact.phone):
        return {"name": request.contact.name, "phone": request.contact.phone,
                "id_number": request.contact.id_number or None}
    return None


def _import_receipt(r: ImportReceipt):
    return import_pb.ImportReceipt(id=r.id, tracking_code=r.tracking_code, status=r.status, category=r.category,
                                   channel=r.channel, created=r.created, source_ref=r.source_ref,
                                   duplicate_of=r.duplicate_of or "", created_at=r.created_at, due_at=r.sla.due_at,
                                   sla_policy=r.sla.policy)


class PetitionImportServicer(import_grpc.PetitionImportServiceServicer):
    """Hotline transfers and comments from accounts: the same use cases as REST's imports."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    @grpc_errors
    async def ImportHotline(self, request, context):
        who = await grpc_principal(context, self.rt.verifier)
        data = parse_request(HotlineImport, work_order_no=request.work_order_no, category=request.category,
                             title=request.title, content=request.content, contact=_contact(request),
                             location=request.location or None, received_at=request.received_at or None)
        return _import_receipt(await imports.import_hotline(self.rt, who, data))

    @grpc_errors
    async def ImportComment(self, request, context):
        # The unit's app signs in with its client credentials: a client token is welcome here.
        who = await grpc_principal(context, self.rt.verifier, allow_clients=True)
        data = parse_request(CommentImport, account_id=request.account_id, comment_id=request.comment_id,
                             category=request.category, title=request.title or None, content=request.content,
                             contact=_contact(request), location=request.location or None)
        return _import_receipt(await imports.import_comment(self.rt, who, data))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_PetitionServiceServicer_to_server(PetitionServicer(rt), server)
    import_grpc.add_PetitionImportServiceServicer_to_server(PetitionImportServicer(rt), server)

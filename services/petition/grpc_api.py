"""gRPC transport of the petition service: the same use cases as REST."""
from __future__ import annotations

from pydantic import BaseModel

from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.limits import grpc_peer_address
from govmedia_kit.runtime import Runtime

from . import usecases
from .models import Category, PetitionCreate, PetitionPublic, PetitionReceipt, SlaPublic, Status

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PetitionService"].full_name



class ListFilters(BaseModel):
    model_config = {"extra": "forbid"}
    status: Status | None = None
    category: Category | None = None



def _sla(s: SlaPublic) -> pb.Sla:
    return pb.Sla(policy=s.policy, stage=s.stage, due_at=s.due_at, warn_at=s.warn_at, paused=s.paused)


def _petition(p: PetitionPublic) -> pb.Petition:
    msg = pb.Petition(id=p.id, category=p.category, title=p.title, content=p.content, channel=p.channel,
                      location=p.location or "", status=p.status, sla=_sla(p.sla), created_at=p.created_at)
    if p.contact:
        msg.contact.CopyFrom(pb.Contact(name=p.contact.name or "", phone=p.contact.phone or ""))
    return msg


def _receipt(r: PetitionReceipt) -> pb.Petition:
    return pb.Petition(id=r.id, tracking_code=r.tracking_code, category=r.category, status=r.status,
                       sla=_sla(r.sla), created_at=r.created_at)


class PetitionServicer(pb_grpc.PetitionServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context):
        return await grpc_principal(context, self.rt.verifier)

    @grpc_errors
    async def CreatePetition(self, request, context):
        """Public intake, no token (behind a proxy, the rate limit sees the proxy: see README)."""
        self.rt.state["intake_limiter"].admit(grpc_peer_address(context.peer() or "unknown"))
        contact = None
        if request.HasField("contact") and (request.contact.name or request.contact.phone):
            contact = {"name": request.contact.name, "phone": request.contact.phone}
        data = parse_request(PetitionCreate, category=request.category, title=request.title, content=request.content,
                     channel=request.channel, contact=contact, location=request.location or None)
        return _receipt(PetitionReceipt.of(await usecases.create_petition(self.rt, data)))

    @grpc_errors
    async def ListPetitions(self, request, context):
        who = await self._who(context)
        filters = parse_request(ListFilters, status=request.status or None, category=request.category or None)
        items, nxt = await usecases.list_petitions(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                   filters.status, filters.category)
        return pb.PetitionList(items=[_petition(PetitionPublic.of(p)) for p in items], next_cursor=nxt or "")

    @grpc_errors
    async def GetPetition(self, request, context):
        who = await self._who(context)
        petition, reveal = await usecases.get_petition(self.rt, who, request.id)
        return _petition(PetitionPublic.of(petition, reveal))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_PetitionServiceServicer_to_server(PetitionServicer(rt), server)

"""gRPC transport of the dispatch service: the same use cases as REST."""
from __future__ import annotations



from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.errors import AppError
from govmedia_kit.grpc import grpc_errors
from govmedia_kit.runtime import Runtime

from . import usecases
from .models import FeedEvent, PublicationPublic, RetractionPublic

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatchService"].full_name


def _publication(p: PublicationPublic) -> pb.Publication:
    return pb.Publication(item_id=p.item_id, version=p.version, targets=p.targets,
                          counts=pb.StateCounts(**p.counts.model_dump()), created_at=p.created_at or "",
                          retracted=p.retracted)


def _retraction(r: RetractionPublic) -> pb.Retraction:
    return pb.Retraction(
        item_id=r.item_id, reason=r.reason, targets=r.targets, confirmed=r.confirmed, outstanding=r.outstanding,
        stragglers=[pb.Straggler(account_id=s.account_id, state=s.state, attempts=s.attempts,
                                 last_error=s.last_error or "") for s in r.stragglers],
        started_at=r.started_at or "", completed_at=r.completed_at or "", gone=r.gone,
    )


def _event(e: FeedEvent) -> pb.ClientEvent:
    return pb.ClientEvent(**e.model_dump())


class DispatchServicer(pb_grpc.DispatchServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context, allow_clients: bool = False):
        return await grpc_principal(context, self.rt.verifier, allow_clients)

    @grpc_errors
    async def GetPublication(self, request, context):
        return _publication(await usecases.get_publication(self.rt, await self._who(context), request.item_id))

    @grpc_errors
    async def GetRetraction(self, request, context):
        return _retraction(await usecases.get_retraction(self.rt, await self._who(context), request.item_id))

    @grpc_errors
    async def Ack(self, request, context):
        who = await self._who(context, allow_clients=True)
        if not request.delivery_ids:
            raise AppError(422, "validation_failed", "delivery_ids 不能为空")
        return pb.AckResponse(acknowledged=await usecases.ack(self.rt, who, list(request.delivery_ids)))

    async def Subscribe(self, request, context):
        """Server stream: written with context.write so refusals before the first event
        answer with a status and the stable code, like the unary calls."""
        try:
            events = await usecases.open_feed(self.rt, await self._who(context, allow_clients=True), request.cursor)
        except AppError as exc:
            context.set_trailing_metadata((("error-code", exc.code),))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
            return
        async for batch in events:
            for e in batch:
                await context.write(_event(e))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_DispatchServiceServicer_to_server(DispatchServicer(rt), server)

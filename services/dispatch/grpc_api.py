"""gRPC transport of the dispatch service: the same use cases as REST."""
from __future__ import annotations

import asyncio
import json
import logging

import grpc

from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia_kit.auth import bearer, grpc_principal
from govmedia_kit.errors import AppError, invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request, refuse_nul, refuse_nul_in
from govmedia_kit.runtime import Runtime

from . import deliveries, feed, metrics, usecases
from .models import (
    STATES, DeliveryPublic, FeedEvent, MetricsBody, MetricsReceipt, PublicationMetricsPublic, PublicationPublic,
    RetractionPublic,
)

log = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatchService"].full_name


def _publication(p: PublicationPublic) -> pb.Publication:
    return pb.Publication(item_id=p.item_id, version=p.version, targets=p.targets,
                          counts=pb.StateCounts(**p.counts.model_dump()), created_at=p.created_at or "",
                          retracted=p.retracted, excluded=p.excluded, failures=p.failures,
                          publish_at=p.publish_at or "", scheduled=p.scheduled, suppressed=p.suppressed)


def _retraction(r: RetractionPublic) -> pb.Retraction:
    return pb.Retraction(
        item_id=r.item_id, reason=r.reason, targets=r.targets, confirmed=r.confirmed, outstanding=r.outstanding,
        stragglers=[pb.Straggler(account_id=s.account_id, state=s.state, attempts=s.attempts,
                                 last_error=s.last_error or "", delivery_id=s.delivery_id,
                                 next_attempt_at=s.next_attempt_at or "") for s in r.stragglers],
        started_at=r.started_at or "", completed_at=r.completed_at or "", gone=r.gone,
        stragglers_alerted_at=r.stragglers_alerted_at or "", stragglers_next_cursor=r.stragglers_next_cursor or "",
    )


def _event(e: FeedEvent) -> pb.ClientEvent:
    # Field by field, not through model_dump: once per client per event (half its cost).
    return pb.ClientEvent(seq=e.seq, event_id=e.event_id, type=e.type, item_id=e.item_id, version=e.version,
                          title=e.title, body=e.body, delivery_id=e.delivery_id, time=e.time,
                          data=json.dumps(e.data, ensure_ascii=False, separators=(",", ":")))


def _delivery(d: DeliveryPublic) -> pb.Delivery:
    return pb.Delivery(
        id=d.id, seq=d.seq, item_id=d.item_id, version=d.version, account_id=d.account_id, kind=d.kind, mode=d.mode,
        state=d.state, attempts=d.attempts, last_error=d.last_error or "", gone=d.gone,
        next_attempt_at=d.next_attempt_at or "", created_at=d.created_at or "", updated_at=d.updated_at or "",
        history=[pb.Transition(from_state=t.from_state or "", to_state=t.to_state, at=t.at or "", error=t.error or "")
                 for t in d.history or ()])


def _counts(c) -> pb.MetricCounts:
    return pb.MetricCounts(reads=c.reads, likes=c.likes, shares=c.shares, comments=c.comments)


def _metrics(m: PublicationMetricsPublic) -> pb.PublicationMetrics:
    return pb.PublicationMetrics(
        item_id=m.item_id, totals=_counts(m.totals),
        platforms=[pb.PlatformMetrics(platform=p.platform, counts=_counts(p)) for p in m.platforms],
        days=[pb.MetricsRow(day=d.day, platform=d.platform, counts=_counts(d)) for d in m.days])


def _metrics_body(report: pb.MetricsReport) -> MetricsBody:
    entries = [{"item_id": e.item_id, "day": e.day or None, "reads": e.reads, "likes": e.likes, "shares": e.shares,
                "comments": e.comments} for e in report.entries]
    return parse_request(MetricsBody, report_id=report.report_id, entries=entries)


def _receipt(r: MetricsReceipt) -> pb.MetricsReceipt:
    return pb.MetricsReceipt(report_id=r.report_id, accepted=r.accepted, duplicate=r.duplicate, entries=r.entries)


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
        return pb.AckResponse(acknowledged=await feed.ack(self.rt, who, list(request.delivery_ids)))

    @grpc_errors
    async def ReportMetrics(self, request, context):
        who = await self._who(context, allow_clients=True)
        return _receipt(await metrics.report(self.rt, who, _metrics_body(request)))

    @grpc_errors
    async def GetPublicationMetrics(self, request, context):
        return _metrics(await metrics.publication_metrics(self.rt, await self._who(context), request.item_id))

    @grpc_errors
    async def GetDelivery(self, request, context):
        return _delivery(await deliveries.get_delivery(self.rt, await self._who(context), request.delivery_id))

    @grpc_errors
    async def ListDeliveries(self, request, context):
        who = await self._who(context)
        if request.state and request.state not in STATES:
            raise invalid("validation_failed", "state 取值无效", {"state": request.state})
        if request.kind and request.kind not in ("publish", "kill"):
            raise invalid("validation_failed", "kind 取值无效", {"kind": request.kind})
        found = await deliveries.list_deliveries(
            self.rt, who, limit=page_limit(request.limit), cursor=request.cursor or None, state=request.state or None,
            item_id=request.item_id or None, account_id=request.account_id or None, kind=request.kind or None)
        return pb.DeliveryList(items=[_delivery(d) for d in found.items], next_cursor=found.next_cursor or "")

    @grpc_errors
    async def ResendDelivery(self, request, context):
        return _delivery(await deliveries.resend(self.rt, await self._who(context), request.delivery_id))

    async def Subscribe(self, request, context):
        """Server stream: written with context.write so refusals before the first event
        answer with a status and the stable code, like the unary calls."""
        try:
            events = await feed.open_feed(self.rt, await self._who(context, allow_clients=True), request.cursor,
                                          token=_token(context))
        except AppError as exc:
            context.set_trailing_metadata((("error-code", exc.code),))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
            return
        try:
            async for batch in events:
                for e in batch:
                    await context.write(_event(e))
        except AppError as exc:  # cut while open: slow consumer, account closed, token revoked
            context.set_trailing_metadata((("error-code", exc.code),))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
        finally:
            await events.aclose()

    async def Connect(self, request_iterator, context):
        """Bidirectional: `hello` (the cursor) first; then the client's acknowledgements and
        metrics arrive on the same stream (each answered with a receipt) while its events go
        out. A refused acknowledgement (someone else's delivery…) is answered with the code in
        its receipt and records nothing; the stream goes on. With `hello.refusals_only` only
        refusals are answered (a receipt per event is a third of a kill's gRPC work)."""
        try:
            who = await self._who(context, allow_clients=True)
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("message") != "hello":
                raise invalid("hello_required", "第一条消息须为 hello（携带游标）")
            events = await feed.open_feed(self.rt, who, first.hello.cursor, token=_token(context))
            refusals_only = first.hello.refusals_only
        except AppError as exc:
            context.set_trailing_metadata((("error-code", exc.code),))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
            return
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("Connect: a stream could not be opened")
            await _stream_failed(context)
        # The headers go out now, not with the first event: a client knows its stream is open
        # (registered, catching up) and can tell a connection attempt that went nowhere.
        await context.send_initial_metadata((("govmedia-stream", "open"),))
        lock = asyncio.Lock()  # one write at a time on the stream

        async def write(message: pb.ServerMessage) -> None:
            async with lock:
                await context.write(message)

        async def read() -> None:
            async for message in request_iterator:
                kind = message.WhichOneof("message")
                try:
                    if kind == "ack":
                        ids = list(message.ack.delivery_ids)
                        try:
                            refuse_nul_in(ids)
                            n = await feed.ack(self.rt, who, ids)
                            if refusals_only:
                                continue
                            receipt = pb.AckReceipt(acknowledged=n, delivery_ids=ids)
                        except AppError as exc:
                            receipt = pb.AckReceipt(delivery_ids=ids, error_code=exc.code, error_message=exc.message)
                        await write(pb.ServerMessage(acked=receipt))
                    elif kind == "metrics":
                        try:
                            refuse_nul(message)
                            answer = _receipt(await metrics.report(self.rt, who, _metrics_body(message.metrics)))
                        except AppError as exc:
                            answer = pb.MetricsReceipt(report_id=message.metrics.report_id, error_code=exc.code,
                                                       error_message=exc.message)
                        await write(pb.ServerMessage(metrics=answer))
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("Connect: a client message could not be handled")

        reader = asyncio.create_task(read())
        try:
            async for batch in events:
                for e in batch:
                    await write(pb.ServerMessage(event=_event(e)))
                batch = e = None  # not held while the stream waits for its next events
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except AppError as exc:  # cut while open: slow consumer, account closed, token revoked
            context.set_trailing_metadata((("error-code", exc.code),))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
        except Exception:
            # Nothing is lost (what was not acknowledged goes again); the client is told to
            # come back rather than left with a bare UNKNOWN.
            log.exception("Connect: the stream of %s failed", who.account_id)
            await _stream_failed(context)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await events.aclose()


def _token(context) -> str:
    """The caller's bearer token, kept by its stream to be verified again while it lasts."""
    return bearer(dict(context.invocation_metadata() or ()).get("authorization"))


async def _stream_failed(context) -> None:
    """Tell the client to reconnect with its cursor, with the stable code."""
    context.set_trailing_metadata((("error-code", "stream_failed"),))
    await context.abort(grpc.StatusCode.UNAVAILABLE, "stream_failed: 请携带游标重新连接")


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_DispatchServiceServicer_to_server(DispatchServicer(rt), server)

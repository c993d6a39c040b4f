"""REST transport of the dispatch service (DESIGN.md §5, §6): reports, deliveries, metrics
and the client feed."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from govmedia_kit.auth import AnyPrincipal, CurrentPrincipal, bearer
from govmedia_kit.errors import AppError
from govmedia_kit.runtime import RuntimeDep

from . import deliveries, feed, metrics, usecases
from .models import (
    AckBody, AckPublic, DeliveryKind, DeliveryPage, DeliveryPublic, DeliveryState, EndpointPublic, MetricsBody,
    MetricsReceipt, PublicationMetricsPublic, PublicationPublic, RetractionPublic,
)

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]
MAX_SEQ = 2**63 - 1  # a seq is a BIGINT: a larger cursor is refused here, not by the database


def last_event_cursor(header: str | None) -> int:
    """The cursor in `Last-Event-ID` (the `id:` we sent: a seq in ASCII digits). Anything else
    is 400 `invalid_last_event_id`: Python's int() also reads Arabic-Indic or full-width
    digits ('٣', '３'), which would resume from a cursor the client never saw."""
    if not header:
        return 0
    if len(header) > 19 or not header.isascii() or not header.isdigit() or int(header) > MAX_SEQ:
        raise AppError(400, "invalid_last_event_id", "Last-Event-ID 须为本接口发出的事件编号（ASCII 数字）")
    return int(header)


@router.get("/v1/publications/{item_id}", response_model=PublicationPublic, tags=["dispatch"])
async def get_publication(rt: RuntimeDep, who: CurrentPrincipal, item_id: str):
    """Targets, counts per state, who was left out and why (`excluded`), failed targets per
    reason (`failures`, render failures included), and the embargo (`publish_at`)."""
    return await usecases.get_publication(rt, who, item_id)


@router.get("/v1/publications/{item_id}/metrics", response_model=PublicationMetricsPublic, tags=["dispatch"])
async def get_publication_metrics(rt: RuntimeDep, who: CurrentPrincipal, item_id: str):
    """Reads, likes, shares and comments the clients reported, per platform and day (Asia/Shanghai)."""
    return await metrics.publication_metrics(rt, who, item_id)


@router.get("/v1/retractions/{item_id}", response_model=RetractionPublic, tags=["dispatch"])
async def get_retraction(rt: RuntimeDep, who: CurrentPrincipal, item_id: str,
                         limit: Annotated[int, Query(ge=1, le=1000)] = usecases.STRAGGLER_PAGE,
                         cursor: Annotated[int, Query(ge=0, description="stragglers_next_cursor of the last page")] = 0):
    """Exact counts; the stragglers (kills not yet confirmed) a page at a time."""
    return await usecases.get_retraction(rt, who, item_id, limit=limit, cursor=cursor)


@router.get("/v1/endpoints/{account_id}", response_model=EndpointPublic, tags=["dispatch"])
async def get_endpoint(rt: RuntimeDep, who: CurrentPrincipal, account_id: str):
    """Whether dispatch knows the account yet and still reaches it (410 deactivates), and its
    endpoint's circuit breaker in this process."""
    return await usecases.get_endpoint(rt, who, account_id)


@router.get("/v1/deliveries", response_model=DeliveryPage, tags=["deliveries"])
async def list_deliveries(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                          state: DeliveryState | None = None, item_id: str | None = None,
                          account_id: str | None = None, kind: DeliveryKind | None = None):
    """Deliveries of the items the caller reaches; `state=failed` is the dead-letter list."""
    return await deliveries.list_deliveries(rt, who, limit=limit, cursor=cursor, state=state, item_id=item_id,
                                            account_id=account_id, kind=kind)


@router.get("/v1/deliveries/{delivery_id}", response_model=DeliveryPublic, tags=["deliveries"])
async def get_delivery(rt: RuntimeDep, who: CurrentPrincipal, delivery_id: str):
    """One delivery with every transition (from, to, at, error)."""
    return await deliveries.get_delivery(rt, who, delivery_id)


@router.post("/v1/deliveries/{delivery_id}/resend", response_model=DeliveryPublic, tags=["deliveries"])
async def resend_delivery(rt: RuntimeDep, who: CurrentPrincipal, delivery_id: str):
    """Ops: a failed publish goes pending again (409 item_retracted, endpoint_gone, …)."""
    return await deliveries.resend(rt, who, delivery_id)


@router.get("/v1/feed", tags=["clients"], response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}}})
async def feed_events(rt: RuntimeDep, who: AnyPrincipal, cursor: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
                      last_event_id: Annotated[str | None, Header()] = None,
                      authorization: Annotated[str | None, Header()] = None):
    """Server-sent events for a matrix client: `id:` is the seq to resume from (the cursor,
    or the Last-Event-ID a browser's EventSource sends back by itself). A response ends
    after DISPATCH_SSE_MAX_S and the client reconnects: an endless response would hold a
    SIGTERM'd process until it is killed (uvicorn waits for open responses)."""
    if cursor is None:
        cursor = last_event_cursor(last_event_id)
    events = await feed.open_feed(rt, who, cursor, idle_beat=rt.settings.sse_keepalive_s,
                                  lifetime=rt.settings.sse_max_s, token=bearer(authorization))

    async def body():
        try:
            yield "retry: 1000\n\n"
            async for batch in events:
                if not batch:
                    yield ": keep-alive\n\n"
                    continue
                yield "".join(f"id: {e.seq}\nevent: {e.type}\ndata: {e.model_dump_json()}\n\n" for e in batch)
        except AppError as exc:
            # Cut while open (slow consumer, account closed, token revoked): the stream is
            # answered already, so the refusal is its last event, with the stable code.
            yield f"event: error\ndata: {json.dumps(exc.body(), ensure_ascii=False)}\n\n"
        finally:
            await events.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.post("/v1/feed/acks", response_model=AckPublic, tags=["clients"])
async def ack(rt: RuntimeDep, who: AnyPrincipal, body: AckBody):
    return AckPublic(acknowledged=await feed.ack(rt, who, body.delivery_ids))


@router.post("/v1/feed/metrics", response_model=MetricsReceipt, tags=["clients"])
async def report_metrics(rt: RuntimeDep, who: AnyPrincipal, body: MetricsBody):
    """A client's increments since its previous report; the same `report_id` again counts once."""
    return await metrics.report(rt, who, body)

"""Wiring of the dispatch service: settings, tables, consumers, workers, transports."""
from __future__ import annotations

import asyncio
from pathlib import Path

from govmedia_kit.bus import Consumer
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import feed, grpc_api, metrics, rest, usecases, watch
from .batcher import Coalescer
from .domain import EndpointGate
from .models import Base, directory, tables
from .store import Signal
from .worker import webhook_worker


class DispatchSettings(ServiceSettings):
    """DISPATCH_… variables; tests shrink the timings."""

    retry_base_s: float = 0.5  # first retry after about this, doubling per attempt (with jitter)
    retry_cap_s: float = 60.0
    max_attempts: int = 10  # then failed, and govmedia.dispatch.delivery.failed
    webhook_timeout_s: float = 10.0
    concurrency: int = 512  # webhook requests in flight at once
    endpoint_concurrency: int = 8  # … of which at most this many to one endpoint (host:port)
    breaker_failures: int = 5  # failures in a row (timeout, connection error, 5xx) that open a breaker
    breaker_cooldown_s: float = 30.0  # how long an open breaker holds deliveries back before one try
    claim_batch: int = 512  # deliveries claimed per worker round
    poll_interval_s: float = 1.0  # fallback wake-up of the worker and of each open stream
    stream_batch: int = 500
    write_coalesce_ms: float = 20.0  # stream writes and acknowledgements of all clients gathered this long
    sse_keepalive_s: float = 15.0
    sse_max_s: float = 25.0  # one SSE response lasts this long; the client resumes with Last-Event-ID
    straggler_alert_s: float = 300.0  # a retraction outstanding this long raises retraction.stragglers
    straggler_check_s: float = 30.0
    metrics_flush_s: float = 5.0  # how often reported metrics go out on the bus
    # The link to the full item a shortened post carries (e.g. a Weibo text over 2000 characters).
    item_url: str = "https://www.example.gov.cn/items/{item_id}"


def load_settings(**overrides) -> DispatchSettings:
    return settings_for("dispatch", DispatchSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    cfg = rt.settings
    rt.state["signal"] = Signal()
    rt.state["gate"] = EndpointGate(limit=cfg.endpoint_concurrency, threshold=cfg.breaker_failures,
                                    cooldown_s=cfg.breaker_cooldown_s)
    rt.state["contents"] = usecases.Contents()
    rt.state["writes"] = Coalescer(lambda ops: feed.flush_writes(rt, ops), cfg.write_coalesce_ms / 1000)


async def write_coalescer(rt: Runtime, stop: asyncio.Event) -> None:
    await feed.writes(rt).run(stop)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="dispatch",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        consumers=[
            Consumer("dispatch-region-upserted", "govmedia.account.region.upserted", usecases.on_region_upserted),
            directory.consumer("dispatch"),
            Consumer("dispatch-account-changed", "govmedia.account.account.>", usecases.on_account_changed),
            Consumer("dispatch-item-approved", "govmedia.review.item.approved", usecases.on_item_approved),
            Consumer("dispatch-item-retracted", "govmedia.content.item.retracted", usecases.on_item_retracted),
            Consumer("dispatch-announcement", "govmedia.account.announcement.requested", usecases.on_announcement),
        ],
        workers=[write_coalescer, webhook_worker, watch.worker, metrics.worker],
        on_start=on_start,
    )

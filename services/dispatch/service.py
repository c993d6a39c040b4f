"""Wiring of the dispatch service: settings, tables, consumers, workers, transports."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from pathlib import Path

from pydantic import Field

from govmedia_kit import egress
from govmedia_kit.bus import Consumer
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import Runtime, ServiceSpec, wait_any

from . import fanout, feed, grpc_api, instruments, metrics, rest, usecases, watch
from .batcher import Coalescer
from .domain import EndpointGate
from .models import Base, directory, tables
from .store import Signal
from .worker import webhook_worker

log = logging.getLogger(__name__)


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
    # A webhook claim holds the delivery this long, renewed every third of it while the send
    # lasts; a crashed process's sends go out again once their lease expires.
    lease_s: float = 30.0
    poll_interval_s: float = 1.0  # fallback wake-up of the worker and of each open stream
    stream_batch: int = 500
    # DISPATCH_STREAMS_PER_CLIENT: streams (Subscribe, Connect, SSE) one client may have open in
    # this process at once; one more is refused (429 too_many_streams / RESOURCE_EXHAUSTED).
    streams_per_client: int = Field(default=4, ge=1, le=100)
    # DISPATCH_STREAM_MAILBOX: events waiting for one stream beyond which it is cut
    # (slow_consumer; the client resumes from its cursor) instead of growing memory.
    stream_mailbox: int = Field(default=5000, ge=10)
    # DISPATCH_STREAM_RECHECK_S: how often open streams are checked against their account
    # (closed, no longer a stream) and their token (revoked, expired). With JWKS_REFRESH_S
    # (30) a revoked secret ends the client's streams within 45 s.
    stream_recheck_s: float = Field(default=15.0, gt=0, le=30)
    write_coalesce_ms: float = 20.0  # stream writes and acknowledgements of all clients gathered this long
    sse_keepalive_s: float = 15.0
    sse_max_s: float = 25.0  # one SSE response lasts this long; the client resumes with Last-Event-ID
    straggler_alert_s: float = 300.0  # a retraction outstanding this long raises retraction.stragglers
    straggler_check_s: float = 30.0
    metrics_flush_s: float = 5.0  # how often reported metrics go out on the bus
    # Delivery mode nats (fanout.py): dispatch's own user in the NATS account CLIENTS
    # (DISPATCH_CLIENTS_NATS_CREDS, from the estate: govmedia_kit/nats_estate.py), on the
    # servers at DISPATCH_CLIENTS_NATS_URL (NATS_URL if empty).
    clients_nats_url: str = ""
    clients_nats_creds: str = ""
    nats_resend_base_s: float = Field(default=2.0, gt=0)  # an event not acknowledged goes again after this,
    nats_resend_cap_s: float = Field(default=60.0, gt=0)  # doubling up to this (with jitter), until acknowledged
    nats_resend_batch: int = Field(default=5000, ge=1)  # deliveries claimed per resend round
    # The link to the full item a shortened post carries (e.g. a Weibo text over 2000 characters).
    item_url: str = "https://www.example.gov.cn/items/{item_id}"


def load_settings(**overrides) -> DispatchSettings:
    return settings_for("dispatch", DispatchSettings, **overrides)


def instance_id() -> str:
    """Who holds a lease: this process (host and pid, and a random part so a pid reused after
    a restart is another holder)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


async def on_start(rt: Runtime) -> None:
    cfg = rt.settings
    egress.announce(egress.policy(cfg))  # one line: development allows loopback webhooks
    rt.state["instance"] = instance_id()
    rt.state["signal"] = Signal()
    rt.state["gate"] = EndpointGate(limit=cfg.endpoint_concurrency, threshold=cfg.breaker_failures,
                                    cooldown_s=cfg.breaker_cooldown_s)
    rt.state["contents"] = usecases.Contents()
    fanout.install(rt)
    rt.state["writes"] = Coalescer(lambda ops: feed.flush_writes(rt, ops), cfg.write_coalesce_ms / 1000)
    # First reads of connections opening together (one flush: a few queries for up to 1,000).
    rt.state["catch_ups"] = Coalescer(lambda ops: feed.flush_catch_ups(rt, ops), cfg.write_coalesce_ms / 1000,
                                      max_ops=1000)


async def write_coalescer(rt: Runtime, stop: asyncio.Event) -> None:
    await feed.writes(rt).run(stop)


async def catch_up_coalescer(rt: Runtime, stop: asyncio.Event) -> None:
    await feed.catch_ups(rt).run(stop)


WAKE_SUBJECT = "govmedia_wake.dispatch"  # core NATS, outside every JetStream stream: never stored


async def replica_wake(rt: Runtime, stop: asyncio.Event) -> None:
    """Tell the other dispatch replicas (same database, same NATS) when this one commits new
    deliveries, and wake this one when they do. Only a hint: a lost message costs the
    waiters their poll interval (DISPATCH_POLL_INTERVAL_S), never a delivery."""
    signal: Signal = rt.state["signal"]
    me = rt.state["instance"].encode()
    pending = False

    async def tell() -> None:
        nonlocal pending
        pending = False
        nc = rt.bus.nc
        if nc is not None and nc.is_connected:
            try:
                await nc.publish(WAKE_SUBJECT, me)
            except Exception as exc:  # a hint only
                log.debug("replica wake not sent: %s", type(exc).__name__)

    def replicas() -> None:
        nonlocal pending
        if not pending:  # one message per burst of commits in the same turn of the loop
            pending = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(tell()))

    async def on_message(msg) -> None:
        if msg.data != me:
            signal.notify()

    subscription = None
    while not stop.is_set():
        nc = rt.bus.nc
        if subscription is None and nc is not None and nc.is_connected:
            subscription = await nc.subscribe(WAKE_SUBJECT, cb=on_message)
            signal.replicas = replicas
        if await wait_any((stop,), 0.5 if subscription is None else 5.0):
            break
    signal.replicas = None


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
        workers=[write_coalescer, catch_up_coalescer, replica_wake, webhook_worker, *fanout.WORKERS, watch.worker,
                 metrics.worker, instruments.worker],
        on_start=on_start,
        # 10,000 streams opening at once queue in gRPC until the event loop takes each call up
        # (one at a time). gRPC cancels a queued call after 30 s, and, once more than 1,000 are
        # queued, drops new ones at random (all of them past 3,000): each came back to the client
        # as CANCELLED, and its reconnection queued again. Here a call may wait 10 minutes, and
        # the queue may hold every client.
        grpc_options=[("grpc.server_max_unrequested_time_in_server", 600),
                      ("grpc.server.max_pending_requests", 50_000),
                      ("grpc.server.max_pending_requests_hard_limit", 100_000)],
    )

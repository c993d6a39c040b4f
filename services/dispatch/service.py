"""Wiring of the dispatch service: settings, tables, consumers, the webhook worker, transports."""
from __future__ import annotations

from pathlib import Path

from govmedia_kit.bus import Consumer
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import grpc_api, rest, usecases
from .models import Base, directory, tables
from .store import Signal
from .worker import webhook_worker


class DispatchSettings(ServiceSettings):
    """DISPATCH_… variables; tests shrink the retry timings."""

    retry_base_s: float = 0.5  # first retry after about this, doubling per attempt
    retry_cap_s: float = 60.0
    max_attempts: int = 10  # then failed, and govmedia.dispatch.delivery.failed
    webhook_timeout_s: float = 10.0
    concurrency: int = 64  # webhook requests in flight at once
    claim_batch: int = 500  # deliveries claimed per worker round
    poll_interval_s: float = 1.0  # fallback wake-up of the worker and of each open stream
    stream_batch: int = 500
    sse_keepalive_s: float = 15.0
    sse_max_s: float = 25.0  # one SSE response lasts this long; the client resumes with Last-Event-ID


def load_settings(**overrides) -> DispatchSettings:
    return settings_for("dispatch", DispatchSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    rt.state["signal"] = Signal()


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
        workers=[webhook_worker],
        on_start=on_start,
    )

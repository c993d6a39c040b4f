"""Wiring of the review service: settings, tables, transports, consumers, workers, start-up."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.guard import BUFFERED_LIMIT, BodyRule
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import grpc_api, lexicons, rest, urgency
from .consumers import CONSUMERS
from .models import Base, tables


class ReviewSettings(ServiceSettings):
    # REVIEW_OVERDUE_CHECK_INTERVAL_S: how often urgent levels past their deadline are looked for.
    overdue_check_interval_s: float = Field(default=30.0, gt=0)
    # REVIEW_LEXICON_POLL_S: how often a replica looks for a new lexicon version in the background
    # (it also looks before every check, so a new version is never missed).
    lexicon_poll_s: float = Field(default=3.0, gt=0)


def load_settings(**overrides) -> ReviewSettings:
    return settings_for("review", ReviewSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    await lexicons.seed(rt)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="review",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        consumers=CONSUMERS,
        workers=[urgency.worker, lexicons.watch],
        on_start=on_start,
        # The whole lexicon data in one PUT (4 MiB, still read whole and checked by the guard).
        body_rules=[BodyRule(r"/v1/lexicons", BUFFERED_LIMIT)],
    )

"""Wiring of the petition service: settings, tables, transports, start-up."""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from govmedia_kit import workdays
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.db import utcnow
from govmedia_kit.limits import RateLimiter, parse_networks
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import grpc_api, rest
from .models import Base, tables

log = logging.getLogger(__name__)
# How far ahead the official calendar must be known before start-up complains.
CALENDAR_LOOKAHEAD = timedelta(days=60)


class PetitionSettings(ServiceSettings):
    intake_rate_per_minute: int = 30   # PETITION_INTAKE_RATE_PER_MINUTE, per client address
    track_rate_per_minute: int = 120   # PETITION_TRACK_RATE_PER_MINUTE
    trusted_proxies: str = ""          # PETITION_TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed


def load_settings(**overrides) -> PetitionSettings:
    return settings_for("petition", PetitionSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    rt.state["intake_limiter"] = RateLimiter(rt.settings.intake_rate_per_minute)
    rt.state["track_limiter"] = RateLimiter(rt.settings.track_rate_per_minute)
    rt.state["trusted_proxies"] = parse_networks(rt.settings.trusted_proxies)
    check_calendar()


def check_calendar() -> None:
    """Say loudly, at start-up, when intake is about to refuse for want of a calendar year.
    (A bad admin file stops the process: better than deadlines from a wrong calendar.)"""
    today = workdays.local_date(utcnow())
    for day in sorted({today, today + CALENDAR_LOOKAHEAD}):
        try:
            workdays.is_workday(day)
        except workdays.CalendarNotCovered as exc:
            log.error("official calendar for %d is not loaded: petitions received from then on are refused "
                      "until it is added to %s", exc.year, workdays.CALENDAR_FILE_ENV)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="petition",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        on_start=on_start,
    )

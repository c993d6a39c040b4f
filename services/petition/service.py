"""Wiring of the petition service: settings, tables, transports, start-up."""
from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr
from sqlalchemy import event

from govmedia_kit import workdays
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.db import utcnow
from govmedia_kit.client_address import trusted_proxies
from govmedia_kit.limits import RateLimiter
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import grpc_api, instruments, open311, policies, recompute, rest, timers
from .consumers import CONSUMERS
from .crypto import Vault, load_vault
from .models import Base, tables

log = logging.getLogger(__name__)
# How far ahead the official calendar must be known before start-up complains.
CALENDAR_LOOKAHEAD = timedelta(days=60)


class PetitionSettings(ServiceSettings):
    intake_rate_per_minute: int = 30   # PETITION_INTAKE_RATE_PER_MINUTE, per client address
    track_rate_per_minute: int = 120   # PETITION_TRACK_RATE_PER_MINUTE
    trusted_proxies: str = ""          # PETITION_TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed
    # PETITION_DATA_KEY: 32 bytes (hex or base64) sealing citizens' names, phones and ID numbers.
    # Outside production a key file in the data directory is made once when unset.
    data_key: SecretStr = SecretStr("")
    # PETITION_DATA_KEY_PREVIOUS: comma-separated retired keys, which open (never seal) until
    # `govmedia reseal petition` has moved every row to PETITION_DATA_KEY (crypto.py).
    data_key_previous: SecretStr = SecretStr("")
    # PETITION_DATA_OPEN_LEGACY: values sealed before key ids (no row binding) still open;
    # set false once `govmedia reseal petition --check` reports none left.
    data_open_legacy: bool = True
    # PETITION_SLA_WARN_SHARE: the warning's share of a period for the default policies (80 %).
    sla_warn_share: float = Field(default=0.8, gt=0, le=1)
    # PETITION_TIMER_POLL_S: the longest the timer worker sleeps (timers written by other replicas).
    timer_poll_s: float = Field(default=1.0, gt=0)
    # PETITION_CALENDAR_POLL_S: how often a replica looks for a calendar year loaded meanwhile
    # (one indexed read) and then counts again the deadlines it moves (recompute.py).
    calendar_poll_s: float = Field(default=5.0, gt=0)
    # PETITION_DUPLICATE_WINDOW_DAYS: the same citizen on the same matter within it is linked.
    duplicate_window_days: int = Field(default=30, ge=0)
    # PETITION_HOTLINE_MAX_AGE_DAYS: how long before its import a hotline work order may have been
    # received (its `received_at`); older ones are refused (`received_at_too_old`).
    hotline_max_age_days: int = Field(default=30, ge=1, le=366)
    # PETITION_OPEN311_API_KEYS: comma-separated keys accepted by POST /open311/v2/requests.json
    # (scope open311:write only; keys made by ops through /v1/open311/keys carry their scopes).
    open311_api_keys: SecretStr = SecretStr("")
    # PETITION_OPEN311_PUBLIC_CATEGORIES: what anyone may read on Open311 (redacted, coarse); never
    # report or petition (the service refuses to start). The rest needs a key with open311:read_full.
    open311_public_categories: str = "consultation,help,suggestion,complaint"
    # PETITION_OPEN311_READ_RATE_PER_MINUTE: GET requests per client address without a key;
    # PETITION_OPEN311_KEY_RATE_PER_MINUTE: per keyed client.
    open311_read_rate_per_minute: int = Field(default=60, ge=1)
    open311_key_rate_per_minute: int = Field(default=600, ge=1)


def load_settings(**overrides) -> PetitionSettings:
    return settings_for("petition", PetitionSettings, **overrides)


def vault_of(settings: PetitionSettings) -> Vault:
    return load_vault(settings.data_key.get_secret_value(), settings.data_dir, settings.production,
                      settings.data_key_previous.get_secret_value(), settings.data_open_legacy)


def _sqlite_cache(dbapi_conn, _record) -> None:
    # 64 MiB page cache per connection (SQLite's default is 2 MiB): the timer and list indexes
    # of a million open cases stay in memory.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA cache_size=-65536")
    cur.close()


async def on_start(rt: Runtime) -> None:
    if rt.db.is_sqlite:
        event.listen(rt.db.engine.sync_engine, "connect", _sqlite_cache)
    rt.state["vault"] = vault_of(rt.settings)
    await policies.seed(rt)
    rt.state["intake_limiter"] = RateLimiter(rt.settings.intake_rate_per_minute)
    rt.state["track_limiter"] = RateLimiter(rt.settings.track_rate_per_minute)
    rt.state["open311_public"] = open311.public_categories(rt.settings.open311_public_categories)
    rt.state["open311_read_limiter"] = RateLimiter(rt.settings.open311_read_rate_per_minute)
    rt.state["open311_key_limiter"] = RateLimiter(rt.settings.open311_key_rate_per_minute)
    trusted_proxies(rt)  # a bad CIDR stops the start, not the first request
    check_calendar()


def check_calendar() -> None:
    """Say at start-up when deadlines are about to rest on a provisional year.
    (A bad seed file stops the process: better than deadlines from a wrong calendar.)"""
    today = workdays.local_date(utcnow())
    covered = workdays.covered_days(today)  # what the govmedia_calendar_covered_days gauge shows
    if covered < CALENDAR_LOOKAHEAD.days:
        missing = today.year if covered < 0 else (today + timedelta(days=covered + 1)).year
        log.warning("no official calendar for %d yet: deadlines reaching it are provisional (statutory holidays "
                    "only) until ops load the State Council's notice (PUT /v1/calendar/years/%d on the account "
                    "service)", missing, missing)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="petition",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router, open311.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME, grpc_api.IMPORT_SERVICE_NAME],
        consumers=CONSUMERS,
        workers=[timers.worker, recompute.worker, instruments.worker],
        on_start=on_start,
    )

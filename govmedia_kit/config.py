"""Settings for one service process, read from the environment (pydantic-settings).

Shared variables keep their plain names (NATS_URL, GOVMEDIA_ENV, JWKS_URL…); a
service's own ones carry its name as prefix (ACCOUNT_DATABASE_URL, CONTENT_HTTP_PORT…).
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from .collector import DEFAULT_THRESHOLD

# DESIGN.md §5: default local ports.
DEFAULT_PORTS = {
    "account": (8001, 9001),
    "content": (8002, 9002),
    "review": (8003, 9003),
    "dispatch": (8004, 9004),
    "petition": (8005, 9005),
}
SERVICES = tuple(DEFAULT_PORTS)


def _shared(name: str, default):
    return Field(default, validation_alias=AliasChoices(name))


class ServiceSettings(BaseSettings):
    service: str
    env: str = _shared("GOVMEDIA_ENV", "development")  # development | production
    data_dir: Path = _shared("GOVMEDIA_DATA_DIR", Path("data"))
    nats_url: str = _shared("NATS_URL", "nats://127.0.0.1:4222")
    # The service's own NATS user (a .creds file: govmedia_kit/nats_estate.py), allowed only
    # its own subjects. Required in production; `make run` makes one per service.
    nats_creds: str = _shared("NATS_CREDS", "")
    jwks_url: str = _shared("JWKS_URL", "http://127.0.0.1:8001/.well-known/jwks.json")
    token_issuer: str = _shared("TOKEN_ISSUER", "govmedia-account")
    # How old the verifier's copy of the JWKS and the revocation list may get before the next
    # request fetches them again (govmedia_kit/auth.py): a retired key or a deactivated user's
    # tokens are refused everywhere within this (plus one fetch). At most 60 s.
    jwks_refresh_s: float = Field(30.0, gt=0, le=60, validation_alias=AliasChoices("JWKS_REFRESH_S"))
    log_level: str = _shared("LOG_LEVEL", "INFO")
    # Webhook URLs that may lead inside after all (govmedia_kit/egress.py): comma-separated
    # CIDRs and exact host names, e.g. a unit's own intranet gateway. Empty: none.
    webhook_allow: str = _shared("GOVMEDIA_WEBHOOK_ALLOW", "")
    # JetStream streams: copies of each (3 on a production cluster; never more than it has
    # servers, at most 5), and how long events are kept for consumers that fall behind or
    # start late. Dead letters are kept longer: a person has to look at them.
    nats_stream_replicas: int = Field(1, ge=1, le=5, validation_alias=AliasChoices("NATS_STREAM_REPLICAS"))
    nats_stream_max_age_days: float = Field(30, gt=0, validation_alias=AliasChoices("NATS_STREAM_MAX_AGE_DAYS"))
    nats_dlq_max_age_days: float = Field(90, gt=0, validation_alias=AliasChoices("NATS_DLQ_MAX_AGE_DAYS"))
    # Published outbox rows are kept this long for operators' eyes, then pruned (housekeeping.py).
    outbox_keep_days: float = Field(7, gt=0, validation_alias=AliasChoices("OUTBOX_KEEP_DAYS"))
    housekeeping_interval_s: float = Field(3600, gt=0, validation_alias=AliasChoices("HOUSEKEEPING_INTERVAL_S"))
    # The cyclic garbage collector: a collection of the youngest objects every this many
    # allocations (Python's default is 700; see collector.tune_gc). 0 keeps Python's default.
    gc_threshold: int = Field(DEFAULT_THRESHOLD, ge=0, validation_alias=AliasChoices("GOVMEDIA_GC_THRESHOLD"))
    database_url: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    # Consumers: how often a failing event is redelivered before it goes to the dead-letter subject.
    max_deliver: int = 5
    # Consumers: how long an event handed to a process may stay unacknowledged before it is redelivered.
    ack_wait_s: float = 10

    @property
    def production(self) -> bool:
        return self.env == "production"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{self.service}.db').as_posix()}"


def settings_for(service: str, cls: type[ServiceSettings] = ServiceSettings, **overrides) -> ServiceSettings:
    """Settings of `service`, its own variables prefixed with its name (ACCOUNT_…)."""
    http, grpc = DEFAULT_PORTS[service]

    class _Settings(cls):  # type: ignore[misc, valid-type]
        model_config = SettingsConfigDict(env_prefix=f"{service.upper()}_", extra="ignore", populate_by_name=True)

    prefix = f"{service.upper()}_"
    values: dict = {"service": service}
    # Init values outrank the environment in pydantic-settings: pass defaults only where unset.
    for name, default in (("http_port", http), ("grpc_port", grpc)):
        if prefix + name.upper() not in os.environ:
            values[name] = default
    values.update(overrides)
    return _Settings(**values)

"""Wiring of the account service: settings, tables, transports, start-up."""
from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from govmedia_kit import egress
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import (
    accounts, activity, calendar_rest, grpc_api, inspections, instruments, nats_clients, notices, rest, signin,
    signin_rest,
)
from .demo import load_demo
from .models import Base, tables
from . import tokens
from .tokens import passwords


class AccountSettings(ServiceSettings):
    load_demo: bool = False  # ACCOUNT_LOAD_DEMO: load the demo set into an empty database
    filing_check_interval_s: float = 3600.0  # how often overdue filings are looked for
    rectification_check_interval_s: float = 3600.0  # how often overdue rectifications are looked for
    activity_check_interval_s: float = 3600.0  # how often the dormancy watch runs
    # ACCOUNT_CALENDAR_POLL_S: how often a replica looks for a calendar year loaded by another
    # one (one indexed read), then counts again the filing deadlines it moves.
    calendar_poll_s: float = Field(default=5.0, gt=0)
    # Moves the dormancy watch's "now" forward (tests and drills only; 0 in production).
    activity_clock_offset_days: float = 0.0
    # ACCOUNT_KEY_GRACE_S: a rotated-out signing key stays published this long (> token lifetime).
    key_grace_s: int = Field(default=7200, ge=3600)
    # ACCOUNT_PASSWORD_HASH_*: Argon2id's cost (tokens.Passwords). Lower it only as far as
    # OWASP's floor (e.g. 19 MiB with 2 passes), which small pods and the test suite use.
    password_hash_memory_kib: int = Field(default=65536, ge=7168)
    password_hash_time_cost: int = Field(default=3, ge=1)
    password_hash_parallelism: int = Field(default=4, ge=1, le=16)
    # ACCOUNT_KEY_ENCRYPTION_KEY: 32 bytes (hex or base64) sealing the signing keys at rest
    # (tokens.KeySealer); required in production, a key file in the data directory otherwise.
    # ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS: comma-separated former keys, to open and re-seal.
    key_encryption_key: SecretStr = SecretStr("")
    key_encryption_key_previous: SecretStr = SecretStr("")
    # Sign-in hardening (signin.py, govmedia_kit/client_address.py; README "Security"):
    # ACCOUNT_TRUSTED_PROXIES: CIDRs of our own proxies (the ingress); X-Forwarded-For (and gRPC
    # x-forwarded-for metadata) is believed only from them, for the per-address sign-in rule.
    trusted_proxies: str = ""
    # ACCOUNT_PASSWORD_HASH_SLOTS: password checks at once (0: derived from ACCOUNT_MEMORY_LIMIT_MIB,
    # else the container's cgroup limit, minus ACCOUNT_MEMORY_RESERVE_MIB, over one hash's memory);
    # a sign-in waits ACCOUNT_PASSWORD_HASH_QUEUE_S for one, then 429 signin_busy.
    password_hash_slots: int = Field(default=0, ge=0, le=16)
    password_hash_queue_s: float = Field(default=5.0, ge=0, le=30)
    memory_limit_mib: int = Field(default=0, ge=0)
    memory_reserve_mib: int = Field(default=192, ge=0)
    # ACCOUNT_TOTP_REQUIRED_ROLES: roles that must sign in with a TOTP code, besides ops and
    # regulator, which always must when GOVMEDIA_ENV=production.
    totp_required_roles: str = ""
    # NATS credentials of matrix clients in delivery mode nats (nats_clients.py; README "NATS:
    # accounts and credentials"): all five, or none (development without secure NATS: issuing
    # answers 503 nats_not_configured). A credential that could not be revoked is never issued.
    nats_clients_account: str = ""  # ACCOUNT_NATS_CLIENTS_ACCOUNT: the CLIENTS account's public key
    nats_clients_signing_seed_file: str = ""  # a signing key of CLIENTS, which signs the clients' users
    nats_operator_signing_seed_file: str = ""  # an operator signing key, which re-signs CLIENTS on revocation
    nats_system_creds: str = ""  # ACCOUNT_NATS_SYSTEM_CREDS: a SYS user allowed $SYS.REQ.CLAIMS.UPDATE
    nats_client_urls: str = ""  # comma-separated: the servers clients are told to connect to
    nats_client_websocket_url: str = ""  # the WebSocket listener for apps and browsers (optional)
    # ACCOUNT_NATS_CLIENT_KEYS_MAX: live keys per account; issuing one more revokes the oldest.
    nats_client_keys_max: int = Field(default=10, ge=1, le=100)
    # ACCOUNT_NATS_CLIENT_CREDS_TTL_DAYS: a client's user JWT ends this long after issue (0: never);
    # a revoked key leaves the CLIENTS account's list once its JWTs have ended.
    nats_client_creds_ttl_days: float = Field(default=90, ge=0, le=3650)
    # ACCOUNT_NATS_PUSH_CHECK_S: how often a replica checks that the servers hold every revocation.
    nats_push_check_s: float = Field(default=2.0, gt=0, le=60)

    @model_validator(mode="after")
    def _nats_clients_complete(self) -> "AccountSettings":
        needed = {"ACCOUNT_NATS_CLIENTS_ACCOUNT": self.nats_clients_account,
                  "ACCOUNT_NATS_CLIENTS_SIGNING_SEED_FILE": self.nats_clients_signing_seed_file,
                  "ACCOUNT_NATS_OPERATOR_SIGNING_SEED_FILE": self.nats_operator_signing_seed_file,
                  "ACCOUNT_NATS_SYSTEM_CREDS": self.nats_system_creds,
                  "ACCOUNT_NATS_CLIENT_URLS": self.nats_client_urls}
        missing = [name for name, value in needed.items() if not value.strip()]
        if missing and len(missing) < len(needed):
            raise ValueError(f"NATS client credentials need all of {list(needed)}; missing: {missing}")
        return self

    @model_validator(mode="after")
    def _password_hash_floor(self) -> "AccountSettings":
        from govmedia_kit.client_address import parse_networks

        parse_networks(self.trusted_proxies)  # a bad CIDR stops the start, not the first sign-in
        # OWASP's equivalent minimums run from 46 MiB × 1 pass to 7 MiB × 5: memory × passes ≥ 35 MiB.
        if self.password_hash_memory_kib * self.password_hash_time_cost < 35840:
            raise ValueError("ACCOUNT_PASSWORD_HASH_MEMORY_KIB × ACCOUNT_PASSWORD_HASH_TIME_COST must be at least "
                             "35840 (OWASP's floor for Argon2id)")
        return self


def load_settings(**overrides) -> AccountSettings:
    return settings_for("account", AccountSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    await asyncio.to_thread(passwords, rt)  # its unknown-user hash, before the first sign-in
    cfg = rt.settings
    egress.announce(egress.policy(cfg))  # webhook URLs checked at registration: say what may be reached
    tokens.install_key_sealer(cfg.key_encryption_key.get_secret_value(),
                              cfg.key_encryption_key_previous.get_secret_value(), cfg.data_dir, cfg.production)
    await signin.start_keyring(rt)
    tokens.configure_verifier(rt)
    nats_clients.configure(rt)  # the seed files, read once
    if rt.settings.load_demo:
        await load_demo(rt)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="account",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[signin_rest.router, rest.router, calendar_rest.router, inspections.router, activity.router,
                 notices.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        consumers=[*activity.CONSUMERS, *notices.CONSUMERS],
        workers=[accounts.overdue_watch, accounts.recount_watch, signin.signin_worker, inspections.worker,
                 activity.worker, instruments.worker, nats_clients.pusher],
        on_start=on_start,
    )

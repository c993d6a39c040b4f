"""Wiring of the account service: settings, tables, transports, start-up."""
from __future__ import annotations

from pathlib import Path

from govmedia_kit.auth import TokenVerifier
from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import accounts, grpc_api, rest
from .demo import load_demo
from .models import Base, tables
from .tokens import load_keyring


class AccountSettings(ServiceSettings):
    load_demo: bool = False  # ACCOUNT_LOAD_DEMO: load the demo set into an empty database
    filing_check_interval_s: float = 3600.0  # how often overdue filings are looked for


def load_settings(**overrides) -> AccountSettings:
    return settings_for("account", AccountSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    async with rt.db.transaction() as s:
        ring = await load_keyring(s)
    rt.state["keyring"] = ring
    # This service verifies its own tokens with its own keys, without a JWKS round trip.
    rt.verifier = TokenVerifier(None, rt.settings.token_issuer, static_jwks=ring.jwks())
    if rt.settings.load_demo:
        await load_demo(rt)


def build_spec() -> ServiceSpec:
    return ServiceSpec(
        name="account",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        workers=[accounts.overdue_watch],
        on_start=on_start,
    )

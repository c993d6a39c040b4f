"""Wiring of the review service: settings, tables, transports, consumers."""
from __future__ import annotations

from pathlib import Path

from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.runtime import ServiceSpec

from . import grpc_api, rest
from .consumers import CONSUMERS
from .models import Base, tables


def load_settings(**overrides) -> ServiceSettings:
    return settings_for("review", **overrides)


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
    )

"""Wiring of the content service: settings, tables, transports, consumers, start-up."""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import SecretStr

from govmedia_kit.config import ServiceSettings, settings_for
from govmedia_kit.guard import BodyRule
from govmedia_kit.client_address import trusted_proxies
from govmedia_kit.limits import RateLimiter
from govmedia_kit.runtime import Runtime, ServiceSpec

from . import attachments_rest, clues, clues_models, grpc_api, library_rest, rest  # noqa: F401 (clues_models: its tables)
from .clues_rest import public as clues_public, router as clues_router
from .consumers import CONSUMERS
from .models import Base, tables
from .storage import LocalStorage

log = logging.getLogger(__name__)
MiB = 1024 * 1024


class ContentSettings(ServiceSettings):
    # CONTENT_ATTACHMENTS_DIR: where attachment files live (default <GOVMEDIA_DATA_DIR>/content/attachments).
    attachments_dir: Path | None = None
    image_max_bytes: int = 10 * MiB   # CONTENT_IMAGE_MAX_BYTES: image/jpeg, png, gif, webp
    video_max_bytes: int = 200 * MiB  # CONTENT_VIDEO_MAX_BYTES: video/mp4
    max_attachments: int = 50         # CONTENT_MAX_ATTACHMENTS: per draft
    # CONTENT_PUBLIC_BASE_URL: how this service is reached from outside (the URL a reprint's
    # source names); default http://<CONTENT_HTTP_HOST>:<CONTENT_HTTP_PORT>.
    public_base_url: str = ""
    clue_intake_rate_per_minute: int = 10  # CONTENT_CLUE_INTAKE_RATE_PER_MINUTE, per client address
    clue_track_rate_per_minute: int = 60   # CONTENT_CLUE_TRACK_RATE_PER_MINUTE
    trusted_proxies: str = ""              # CONTENT_TRUSTED_PROXIES: CIDRs whose X-Forwarded-For is believed
    # CONTENT_DATA_KEY: 32 bytes (hex or base64) sealing news-clue contacts (clues.py), its own
    # key, not petition's; required in production, a key file in the data directory otherwise.
    # CONTENT_DATA_KEY_PREVIOUS: comma-separated retired keys, which open until
    # `govmedia reseal content` has moved every clue to the current key.
    data_key: SecretStr = SecretStr("")
    data_key_previous: SecretStr = SecretStr("")

    def resolved_attachments_dir(self) -> Path:
        return self.attachments_dir or self.data_dir / "content" / "attachments"


def load_settings(**overrides) -> ContentSettings:
    return settings_for("content", ContentSettings, **overrides)


async def on_start(rt: Runtime) -> None:
    rt.state["data_keyring"] = clues.keyring_of(rt.settings)  # refuses production without CONTENT_DATA_KEY
    storage = LocalStorage(rt.settings.resolved_attachments_dir())
    if removed := storage.sweep_partials():
        log.info("removed %d half-written uploads", removed)
    rt.state["attachment_storage"] = storage
    rt.state["clue_intake_limiter"] = RateLimiter(rt.settings.clue_intake_rate_per_minute)
    rt.state["clue_track_limiter"] = RateLimiter(rt.settings.clue_track_rate_per_minute)
    trusted_proxies(rt)  # a bad CIDR stops the start, not the first request


def build_spec(settings: ContentSettings | None = None) -> ServiceSpec:
    settings = settings or load_settings()
    upload_limit = max(settings.image_max_bytes, settings.video_max_bytes)
    return ServiceSpec(
        name="content",
        metadata=Base.metadata,
        tables=tables,
        migrations_dir=Path(__file__).parent / "migrations",
        routers=[rest.router, attachments_rest.router, library_rest.router, clues_public, clues_router],
        grpc_adders=[grpc_api.add_to_server],
        grpc_service_names=[grpc_api.SERVICE_NAME],
        consumers=CONSUMERS,
        on_start=on_start,
        # Uploads stream past the 1 MiB default, as images and video only; the per-type
        # limits are the use case's (attachments.py).
        body_rules=[BodyRule(attachments_rest.UPLOAD_PATH, upload_limit, ("image/*", "video/*"))],
    )

"""Dispatch tables: read models fed by account events, publications, retractions and
deliveries. Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field as PField
from sqlalchemy import JSON, BigInteger, Column, Index, Integer, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from govmedia_kit.db import utcnow
from govmedia_kit.directory import UnitDirectory
from govmedia_kit.outbox import kit_tables


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)

# Delivery states (DESIGN.md §6); every transition is stamped on the row.
PENDING, IN_FLIGHT, DELIVERED, ACKNOWLEDGED, FAILED, CANCELLED = (
    "pending", "in_flight", "delivered", "acknowledged", "failed", "cancelled",
)
STATES = (PENDING, IN_FLIGHT, DELIVERED, ACKNOWLEDGED, FAILED, CANCELLED)
OPEN_STATES = (PENDING, IN_FLIGHT, DELIVERED)  # not yet acknowledged, failed or cancelled
PUBLISH, KILL = "publish", "kill"
WEBHOOK, STREAM = "webhook", "stream"
EVENT_TYPES = {PUBLISH: "govmedia.dispatch.item.published", KILL: "govmedia.dispatch.item.retracted"}


# --- read models (from govmedia.account.*) ---------------------------------------

class Region(Base, table=True):
    __tablename__ = "regions"
    id: str = Field(primary_key=True, max_length=32)
    name: str = Field(default="", max_length=100)
    parent_id: str | None = Field(default=None, max_length=32, index=True)
    level: str = Field(default="", max_length=20)


# unit → region path: how far ops, the regulator and the supervisor watch.
directory = UnitDirectory(Base.metadata)


class Account(Base, table=True):
    """A matrix client as dispatch needs it: where it sits, and how to reach it."""

    __tablename__ = "accounts"
    id: str = Field(primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    region_id: str = Field(max_length=32, index=True)
    unit_kind: str = Field(default="", max_length=30)
    platform: str = Field(max_length=20, index=True)
    status: str = Field(default="active", max_length=20, index=True)
    delivery_mode: str = Field(max_length=10)
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_secret: str | None = Field(default=None, max_length=200)
    # False once the endpoint answered 410 Gone: nothing more is sent to it.
    endpoint_active: bool = True
    gone_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


# --- what dispatch owns ---------------------------------------------------------

class Publication(Base, table=True):
    """The newest approved version of an item, with the payload kills and publishes render from."""

    __tablename__ = "publications"
    item_id: str = Field(primary_key=True, max_length=32)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    unit_id: str = Field(default="", max_length=32, index=True)
    targets_spec: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    target_count: int = 0
    payload: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Approved after the item had been retracted: recorded, never delivered.
    suppressed: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Retraction(Base, table=True):
    __tablename__ = "retractions"
    item_id: str = Field(primary_key=True, max_length=32)
    version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unit_id: str = Field(default="", max_length=32)
    reason: str = Field(default="", max_length=2000)
    retracted_by: str = Field(default="", max_length=32)
    target_count: int = 0
    started_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None


class Delivery(Base, table=True):
    """One publish or kill to one account. `seq` is the stream resume cursor; `id` is the
    CloudEvents id, stable across retries so clients can de-duplicate."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("item_id", "version", "account_id", "kind", name="uq_deliveries_item_account_kind"),
        Index("ix_deliveries_due", "state", "mode", "next_attempt_at"),
        Index("ix_deliveries_account_seq", "account_id", "seq"),
        Index("ix_deliveries_item_kind", "item_id", "kind", "state"),
    )
    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    id: str = Field(max_length=32, unique=True)
    item_id: str = Field(max_length=32)
    version: int = Field(sa_column=Column(BigInteger, nullable=False))
    account_id: str = Field(max_length=32)
    kind: str = Field(max_length=10)  # publish | kill
    mode: str = Field(max_length=10)  # webhook | stream
    state: str = Field(default=PENDING, max_length=12)
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    gone: bool = False  # failed because the client answered 410 Gone
    next_attempt_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    in_flight_at: datetime | None = None
    delivered_at: datetime | None = None
    acknowledged_at: datetime | None = None
    failed_at: datetime | None = None
    cancelled_at: datetime | None = None


# --- request and response bodies -------------------------------------------------

class AckBody(BaseModel):
    model_config = {"extra": "forbid"}
    delivery_ids: list[str] = PField(min_length=1, max_length=1000)


class AckPublic(BaseModel):
    acknowledged: int


class Counts(BaseModel):
    pending: int = 0
    in_flight: int = 0
    delivered: int = 0
    acknowledged: int = 0
    failed: int = 0
    cancelled: int = 0


class PublicationPublic(BaseModel):
    item_id: str
    version: int
    targets: int
    counts: Counts
    retracted: bool
    created_at: str | None


class Straggler(BaseModel):
    account_id: str
    state: str
    attempts: int
    last_error: str | None


class RetractionPublic(BaseModel):
    item_id: str
    reason: str
    targets: int
    confirmed: int
    outstanding: int
    stragglers: list[Straggler]
    gone: list[str]
    started_at: str | None
    completed_at: str | None


class EndpointPublic(BaseModel):
    account_id: str
    unit_id: str
    platform: str
    status: str
    delivery_mode: str
    endpoint_active: bool
    gone_at: str | None


class FeedEvent(BaseModel):
    """One event on a client's stream (gRPC ClientEvent, SSE `data:`)."""

    seq: int
    event_id: str
    type: str
    item_id: str
    version: int
    title: str = ""
    body: str = ""
    delivery_id: str
    time: str

"""Dispatch tables: read models fed by account events, publications, retractions and
deliveries. Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from datetime import datetime

from typing import Literal

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

# Delivery states (DESIGN.md §6): pending → in_flight → delivered → acknowledged, or failed /
# cancelled. A webhook's 2xx acknowledges at once (in_flight → acknowledged); a stream event
# is delivered when written to the client's connection and acknowledged by the client.
# Every transition is stamped on the row and appended to `delivery_transitions`.
PENDING, IN_FLIGHT, DELIVERED, ACKNOWLEDGED, FAILED, CANCELLED = (
    "pending", "in_flight", "delivered", "acknowledged", "failed", "cancelled",
)
STATES = (PENDING, IN_FLIGHT, DELIVERED, ACKNOWLEDGED, FAILED, CANCELLED)
OPEN_STATES = (PENDING, IN_FLIGHT, DELIVERED)  # not yet acknowledged, failed or cancelled
PUBLISH, KILL = "publish", "kill"
WEBHOOK, STREAM, NATS = "webhook", "stream", "nats"
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
    # "/<province>/…/<region_id>/", from the account's own event: targeting a subtree does not
    # wait for the region events (empty for accounts announced before it was carried).
    region_path: str = Field(default="", max_length=1000, sa_column_kwargs={"server_default": ""})
    unit_kind: str = Field(default="", max_length=30)
    platform: str = Field(max_length=20, index=True)
    status: str = Field(default="active", max_length=20, index=True)
    delivery_mode: str = Field(max_length=10)
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_secret: str | None = Field(default=None, max_length=200)
    # False once the endpoint answered 410 Gone: nothing more is sent to it.
    endpoint_active: bool = True
    # host:port of the webhook URL: what the circuit breaker and the concurrency limit go by.
    endpoint_key: str = Field(default="", max_length=255, index=True, sa_column_kwargs={"server_default": ""})
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
    # Accounts the rule selected but left out, per reason: {"closed": 3, "endpoint_gone": 2…}.
    excluded: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}"))
    # The embargo: nothing of this version is delivered before it (None: at once).
    publish_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # The push's trace (W3C traceparent) when tracing is on: each delivery's span joins it.
    trace_parent: str | None = Field(default=None, max_length=64)


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
    # When govmedia.dispatch.retraction.stragglers was raised (once per retraction).
    stragglers_alerted_at: datetime | None = None
    # The retraction's trace (W3C traceparent) when tracing is on: each kill's span joins it.
    trace_parent: str | None = Field(default=None, max_length=64)


class Delivery(Base, table=True):
    """One publish or kill to one account. `seq` is the stream resume cursor; `id` is the
    CloudEvents id, stable across retries so clients can de-duplicate."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("item_id", "version", "account_id", "kind", name="uq_deliveries_item_account_kind"),
        Index("ix_deliveries_due", "state", "mode", "next_attempt_at"),
        Index("ix_deliveries_account_seq", "account_id", "seq"),
        Index("ix_deliveries_item_kind", "item_id", "kind", "state"),
        # A stream's late events (released embargoes, sends a dropped connection left in flight).
        Index("ix_deliveries_account_state", "account_id", "state", "seq"),
        # The dead-letter list: failed deliveries, newest pages by id.
        Index("ix_deliveries_state_id", "state", "id"),
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
    mode: str = Field(max_length=10)  # webhook | stream | nats
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
    # A webhook claim is a lease: the claiming process (`lease_owner`, its instance id) holds
    # the delivery in flight until `lease_until` and renews it while the send lasts; only an
    # expired lease is taken back (a crashed replica's sends), never a live replica's.
    lease_until: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=64)


class DeliveryTransition(Base, table=True):
    """Append-only history of deliveries: every change of state, written in bulk by the same
    statements' transaction (`from_state` is None for the creation)."""

    __tablename__ = "delivery_transitions"
    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    )
    delivery_id: str = Field(max_length=32, index=True)
    from_state: str | None = Field(default=None, max_length=12)
    to_state: str = Field(max_length=12)
    at: datetime = Field(default_factory=utcnow)
    error: str | None = Field(default=None, max_length=500)


class MetricReport(Base, table=True):
    """Report ids already counted, per client: a redelivered report counts once."""

    __tablename__ = "metric_reports"
    account_id: str = Field(primary_key=True, max_length=32)
    report_id: str = Field(primary_key=True, max_length=64)
    received_at: datetime = Field(default_factory=utcnow)


class ItemMetric(Base, table=True):
    """Reads, likes, shares and comments of one item on one account in one day (Asia/Shanghai):
    running sums of the clients' increments, and the part not yet announced on the bus."""

    __tablename__ = "item_metrics"
    item_id: str = Field(primary_key=True, max_length=32)
    account_id: str = Field(primary_key=True, max_length=32)
    day: str = Field(primary_key=True, max_length=10)  # YYYY-MM-DD
    platform: str = Field(default="", max_length=20)
    unit_id: str = Field(default="", max_length=32)  # the account's unit
    reads: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    likes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    shares: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    comments: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unsent_reads: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unsent_likes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unsent_shares: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unsent_comments: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    unsent: bool = Field(default=False, index=True)
    updated_at: datetime = Field(default_factory=utcnow)


# --- request and response bodies -------------------------------------------------

MAX_ACK_IDS = 1000  # per acknowledgement, on every transport


class AckBody(BaseModel):
    model_config = {"extra": "forbid"}
    delivery_ids: list[str] = PField(min_length=1, max_length=MAX_ACK_IDS)


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
    # Selected by the rule but left out, per reason (account status, endpoint_gone, unknown_account).
    excluded: dict[str, int] = {}
    # Failed targets of this version per reason, e.g. {"render: wechat needs a cover image …": 2}.
    failures: dict[str, int] = {}
    publish_at: str | None = None
    scheduled: bool = False  # embargoed: publish_at still ahead
    suppressed: bool = False  # approved after its retraction: never delivered


class Straggler(BaseModel):
    account_id: str
    state: str
    attempts: int
    last_error: str | None
    delivery_id: str = ""
    next_attempt_at: str | None = None


class RetractionPublic(BaseModel):
    item_id: str
    reason: str
    targets: int
    confirmed: int
    outstanding: int
    stragglers: list[Straggler]  # a page, by seq: `stragglers_next_cursor` asks for the next
    stragglers_next_cursor: str | None = None
    gone: list[str]  # at most GONE_LISTED
    started_at: str | None
    completed_at: str | None
    stragglers_alerted_at: str | None = None


class EndpointPublic(BaseModel):
    account_id: str
    unit_id: str
    platform: str
    status: str
    delivery_mode: str
    endpoint_active: bool
    gone_at: str | None
    endpoint: str = ""  # host:port, for webhooks
    circuit: str = "closed"  # closed | open | half_open (this process's breaker)


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
    data: dict = {}  # the platform's rendering, as a webhook's CloudEvent `data`


class TransitionPublic(BaseModel):
    from_state: str | None
    to_state: str
    at: str | None
    error: str | None


class DeliveryPublic(BaseModel):
    id: str
    seq: int
    item_id: str
    version: int
    account_id: str
    kind: str
    mode: str
    state: str
    attempts: int
    last_error: str | None
    gone: bool
    next_attempt_at: str | None
    created_at: str | None
    updated_at: str | None
    in_flight_at: str | None = None
    delivered_at: str | None = None
    acknowledged_at: str | None = None
    failed_at: str | None = None
    cancelled_at: str | None = None
    history: list[TransitionPublic] | None = None

    @classmethod
    def of(cls, row, history=None) -> "DeliveryPublic":
        from govmedia_kit.db import iso

        return cls(
            id=row.id, seq=row.seq, item_id=row.item_id, version=row.version, account_id=row.account_id,
            kind=row.kind, mode=row.mode, state=row.state, attempts=row.attempts, last_error=row.last_error,
            gone=row.gone, next_attempt_at=iso(row.next_attempt_at), created_at=iso(row.created_at),
            updated_at=iso(row.updated_at), in_flight_at=iso(row.in_flight_at), delivered_at=iso(row.delivered_at),
            acknowledged_at=iso(row.acknowledged_at), failed_at=iso(row.failed_at),
            cancelled_at=iso(row.cancelled_at),
            history=None if history is None else [
                TransitionPublic(from_state=t.from_state, to_state=t.to_state, at=iso(t.at), error=t.error)
                for t in history],
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None = None


MetricCount = PField(default=0, ge=0, le=1_000_000_000)


class MetricsEntry(BaseModel):
    """Increments since the client's previous report (not running totals)."""

    model_config = {"extra": "forbid"}
    item_id: str = PField(min_length=1, max_length=32)
    # The Asia/Shanghai day the counts belong to (YYYY-MM-DD); default: today there.
    day: str | None = PField(default=None, pattern=r"^\d{4}-\d{2}-\d{2}$")
    reads: int = MetricCount
    likes: int = MetricCount
    shares: int = MetricCount
    comments: int = MetricCount


class MetricsBody(BaseModel):
    model_config = {"extra": "forbid"}
    # Unique per client and report: a report sent again with the same id counts once.
    report_id: str = PField(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    entries: list[MetricsEntry] = PField(min_length=1, max_length=500)


class MetricsReceipt(BaseModel):
    report_id: str
    accepted: bool  # counted now
    duplicate: bool  # this report id was counted before: nothing added
    entries: int


class MetricCounts(BaseModel):
    reads: int = 0
    likes: int = 0
    shares: int = 0
    comments: int = 0


class MetricsRow(MetricCounts):
    day: str
    platform: str


class PlatformMetrics(MetricCounts):
    platform: str


class PublicationMetricsPublic(BaseModel):
    item_id: str
    totals: MetricCounts
    platforms: list[PlatformMetrics]
    days: list[MetricsRow]  # per day (Asia/Shanghai) and platform


DeliveryState = Literal["pending", "in_flight", "delivered", "acknowledged", "failed", "cancelled"]
DeliveryKind = Literal["publish", "kill"]

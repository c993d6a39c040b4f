"""Account service tables and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field as PField, HttpUrl, field_validator
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from govmedia_kit.audit import AuditTrail
from govmedia_kit.auth import ROLES
from govmedia_kit.db import new_id, utcnow
from govmedia_kit.outbox import kit_tables


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)
# Every change to a user (created, deactivated, reactivated, roles changed, password reset):
# who, when, before and after; append-only and hash-chained, one stream per user (its id).
trail = AuditTrail(Base.metadata)

PLATFORMS = ("weibo", "wechat", "douyin", "kuaishou", "toutiao", "bilibili", "app", "web", "other")
REGION_LEVELS = ("province", "city", "county", "township")
UNIT_KINDS = ("government", "department", "institution", "party", "other")

Platform = Literal["weibo", "wechat", "douyin", "kuaishou", "toutiao", "bilibili", "app", "web", "other"]
RegionLevel = Literal["province", "city", "county", "township"]
UnitKind = Literal["government", "department", "institution", "party", "other"]


# --- tables -----------------------------------------------------------------

class Region(Base, table=True):
    __tablename__ = "regions"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    parent_id: str | None = Field(default=None, foreign_key="regions.id", index=True)
    level: str = Field(max_length=20)
    # Materialised path "/<province>/<city>/…/<id>/": a subtree is every path with this prefix.
    # Regions never move, so it is written once.
    path: str = Field(max_length=400, index=True)
    created_at: datetime = Field(default_factory=utcnow)

    @classmethod
    def new(cls, name: str, level: str, parent: "Region | None" = None) -> "Region":
        region_id = new_id()
        return cls(id=region_id, name=name, level=level, parent_id=parent.id if parent else None,
                   path=f"{parent.path if parent else '/'}{region_id}/")


class Unit(Base, table=True):
    __tablename__ = "units"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=200, index=True)
    region_id: str = Field(foreign_key="regions.id", index=True)
    parent_id: str | None = Field(default=None, foreign_key="units.id")
    kind: str = Field(max_length=30)
    # Registered short names (简称): an account's name must contain the unit's name, its
    # region's name or one of these.
    short_names: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]"))
    created_at: datetime = Field(default_factory=utcnow)


class User(Base, table=True):
    __tablename__ = "users"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    username: str = Field(max_length=64, unique=True)
    display_name: str = Field(default="", max_length=100)
    password_hash: str = Field(max_length=200)
    unit_id: str = Field(foreign_key="units.id", index=True)
    roles: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class Account(Base, table=True):
    __tablename__ = "accounts"
    __table_args__ = (UniqueConstraint("platform", "handle", name="uq_accounts_platform_handle"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(foreign_key="units.id", index=True)
    region_id: str = Field(foreign_key="regions.id", index=True)
    platform: str = Field(max_length=20, index=True)
    name: str = Field(max_length=200)
    handle: str | None = Field(default=None, max_length=200)  # known once opened on the platform
    opened_on: date | None = None
    responsible: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str | None = Field(default=None, max_length=1000)  # why the unit opens it
    meeting_ref: str | None = Field(default=None, max_length=200)  # the leadership meeting that decided it
    filing_due: date | None = None  # of the opening filing (备案): 10 working days after opening
    # official | provisional: what filing_due rests on (a year without the State Council notice yet)
    filing_calendar: str | None = Field(default=None, max_length=12)
    filed_on: date | None = None
    close_reason: str | None = Field(default=None, max_length=1000)
    deregistered_on: date | None = None
    closed_on: date | None = None
    delivery_mode: str = Field(max_length=10)
    webhook_url: str | None = Field(default=None, max_length=2000)
    webhook_secret: str | None = Field(default=None, max_length=200)  # never returned
    client_secret_hash: str | None = Field(default=None, max_length=200)  # stream and nats clients
    status: str = Field(default="active", max_length=20, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# The lifecycle (DOMAIN.md, Accounts): applied → approved → opened → (filed) active;
# active → closing → close_approved (announcement pushed) → deregistered → (filed) closed.
ACCOUNT_STATES = ("applied", "approved", "opened", "active", "closing", "close_approved", "deregistered", "closed")
# The states in which an account still receives what dispatch pushes.
RECEIVING = ("active", "closing", "close_approved")


class AccountStep(Base, table=True):
    """One recorded step of an account's life: who, when, on which document."""

    __tablename__ = "account_steps"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    action: str = Field(max_length=40)
    actor_id: str = Field(max_length=32)
    at: datetime = Field(default_factory=utcnow)
    document_ref: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=1000)
    data: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Filing(Base, table=True):
    """A filing (备案) owed to the regulator: of an opening, a change or a closing."""

    __tablename__ = "filings"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    kind: str = Field(max_length=10)  # opening | change | closing
    due_on: date = Field(index=True)
    # The day the working days are counted from (opened, changed, deregistered on), what due_on
    # rests on (official | provisional) and the calendar revision it was counted with: a
    # provisional year made official has due_on counted again (calendar.py).
    counted_from: date | None = None
    calendar: str = Field(default="official", max_length=12, sa_column_kwargs={"server_default": "official"})
    calendar_rev: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    filed_on: date | None = None
    filed_by: str | None = Field(default=None, max_length=32)
    document_ref: str | None = Field(default=None, max_length=200)
    overdue_reported_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)


class PlatformException(Base, table=True):
    """The regulator's recorded exception to "one account per unit per platform"."""

    __tablename__ = "platform_exceptions"
    __table_args__ = (UniqueConstraint("unit_id", "platform", name="uq_platform_exceptions_unit_platform"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(foreign_key="units.id", index=True)
    platform: str = Field(max_length=20)
    reason: str = Field(max_length=1000)
    recorded_by: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow)


class ApprovedPlatform(Base, table=True):
    """The province's list of platforms accounts may live on (seeded with every known one)."""

    __tablename__ = "approved_platforms"
    platform: str = Field(primary_key=True, max_length=20)
    approved: bool = True
    updated_by: str | None = Field(default=None, max_length=32)
    updated_at: datetime = Field(default_factory=utcnow)


class SigningKey(Base, table=True):
    __tablename__ = "signing_keys"
    kid: str = Field(primary_key=True, max_length=64)
    # Sealed with ACCOUNT_KEY_ENCRYPTION_KEY (tokens.KeySealer: AES-256-GCM, the kid as
    # associated data), never the PEM in clear; "" once wiped after its grace.
    private_pem: str
    active: bool = True
    created_at: datetime = Field(default_factory=utcnow)


class TokenRevocation(Base, table=True):
    """Tokens of `subject` issued before `not_before` are refused by every service
    (govmedia_kit/auth.py): written when a user is deactivated, their roles change or their
    password is reset. One row per subject, the latest change."""

    __tablename__ = "token_revocations"
    subject: str = Field(primary_key=True, max_length=64)
    not_before: datetime = Field(index=True)
    reason: str = Field(max_length=20)  # deactivated | roles_changed | password_reset


class NatsClientKey(Base, table=True):
    """One NATS user key of a matrix client in delivery mode `nats` (nats_clients.py): only
    the public key is kept (a seed the service made was shown once). `issued_at`: of the newest
    JWT issued for it. A revoked key is listed in the CLIENTS account's JWT the servers hold,
    and never issued again. Rows are never deleted: their count is the revocation set's version."""

    __tablename__ = "nats_client_keys"
    public_key: str = Field(primary_key=True, max_length=56)
    account_id: str = Field(foreign_key="accounts.id", index=True, max_length=32)
    issued_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None, index=True)
    # secret_rotated | secret_revoked | delivery_changed | deregistered | closed | replaced
    reason: str | None = Field(default=None, max_length=20)


class NatsRevocationPush(Base, table=True):
    """The last CLIENTS account JWT pushed to the NATS servers (one row, `id` "clients"): how
    many keys were revoked then, and its `iat`, which every later push reaches at least (the
    servers keep the JWT with the newest). Locked while a replica pushes, so pushes follow one
    another and none sends an older set after a newer one."""

    __tablename__ = "nats_revocation_pushes"
    id: str = Field(primary_key=True, max_length=20)
    revoked_count: int = 0
    iat: int = 0
    pushed_at: datetime | None = None


# --- request and response bodies ---------------------------------------------

class Strict(BaseModel):
    model_config = {"extra": "forbid", "str_strip_whitespace": True}


class RegionCreate(Strict):
    name: str = PField(min_length=1, max_length=100)
    parent_id: str | None = None
    level: RegionLevel


class RegionPublic(BaseModel):
    id: str
    name: str
    parent_id: str | None
    level: str
    path: str


class UnitCreate(Strict):
    name: str = PField(min_length=1, max_length=200)
    region_id: str = PField(min_length=1)
    parent_id: str | None = None
    kind: UnitKind = "government"
    short_names: list[str] = PField(default_factory=list, max_length=10)


class UnitPublic(BaseModel):
    id: str
    name: str
    region_id: str
    parent_id: str | None
    kind: str
    short_names: list[str] = []


class UserCreate(Strict):
    username: str = PField(min_length=2, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    password: str = PField(min_length=10, max_length=200)
    display_name: str = PField(default="", max_length=100)
    unit_id: str = PField(min_length=1)
    roles: list[str] = PField(min_length=1)

    @field_validator("roles")
    @classmethod
    def known_roles(cls, roles: list[str]) -> list[str]:
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown roles {unknown}; known: {list(ROLES)}")
        return sorted(set(roles))


class UserPublic(BaseModel):
    id: str
    username: str
    display_name: str
    unit_id: str
    roles: list[str]
    active: bool = True


class UserDeactivate(Strict):
    reason: str = PField(min_length=1, max_length=500)  # recorded in the user's audit trail


class UserReactivate(Strict):
    reason: str = PField(default="", max_length=500)


class UserRolesIn(Strict):
    roles: list[str] = PField(min_length=1, max_length=len(ROLES))
    reason: str = PField(default="", max_length=500)

    @field_validator("roles")
    @classmethod
    def known_roles(cls, roles: list[str]) -> list[str]:
        return UserCreate.known_roles(roles)


class PasswordResetIn(Strict):
    password: str = PField(min_length=10, max_length=200)
    reason: str = PField(default="", max_length=500)


class Responsible(Strict):
    """The three responsible people; a missing one is refused by the rules with its own code."""

    principal: str = PField(default="", max_length=50)
    deputy: str = PField(default="", max_length=50)
    chief_editor: str = PField(default="", max_length=50)


class WebhookDelivery(Strict):
    mode: Literal["webhook"]
    url: HttpUrl
    secret: str = PField(min_length=16, max_length=200)


class StreamDelivery(Strict):
    mode: Literal["stream"]


class NatsDelivery(Strict):
    """The client connects to the NATS cluster with credentials the account service issues
    (POST /v1/clients/nats-credentials); it gets a client secret, as `stream` does."""

    mode: Literal["nats"]


Delivery = Annotated[WebhookDelivery | StreamDelivery | NatsDelivery, PField(discriminator="mode")]
# Delivery modes whose clients hold client credentials (client_id = the account id).
CLIENT_MODES = ("stream", "nats")


class AccountCreate(Strict):
    """Registering an account that exists already (DESIGN.md §5): active and filed at once."""

    unit_id: str = PField(min_length=1)
    platform: Platform
    name: str = PField(min_length=1, max_length=200)
    handle: str = PField(min_length=1, max_length=200)
    opened_on: date
    responsible: Responsible
    delivery: Delivery


class ApplicationCreate(Strict):
    """An application to open a new account (设立申请)."""

    unit_id: str = PField(min_length=1)
    platform: Platform
    name: str = PField(min_length=1, max_length=200)
    reason: str = PField(min_length=1, max_length=1000)
    meeting_ref: str = PField(min_length=1, max_length=200)
    responsible: Responsible
    delivery: Delivery
    document_ref: str | None = PField(default=None, max_length=200)


class StepIn(Strict):
    """A lifecycle step that needs only its supporting document and a note."""

    document_ref: str | None = PField(default=None, max_length=200)
    note: str | None = PField(default=None, max_length=1000)


class OpenIn(StepIn):
    handle: str = PField(min_length=1, max_length=200)
    opened_on: date


class ChangeIn(StepIn):
    name: str | None = PField(default=None, min_length=1, max_length=200)
    responsible: Responsible | None = None
    delivery: Delivery | None = None


class CloseIn(StepIn):
    reason: str = PField(min_length=1, max_length=1000)


class DeregisterIn(StepIn):
    deregistered_on: date


class PlatformExceptionIn(Strict):
    platform: Platform
    reason: str = PField(min_length=1, max_length=1000)


class PlatformApprovalIn(Strict):
    approved: bool


class FilingPublic(BaseModel):
    id: str
    account_id: str
    kind: str
    due_on: date
    calendar: Literal["official", "provisional"] = "official"  # what due_on rests on
    filed_on: date | None
    filed_by: str | None
    document_ref: str | None
    overdue: bool = False


class StepPublic(BaseModel):
    id: str
    action: str
    actor_id: str
    at: datetime
    document_ref: str | None
    note: str | None
    data: dict


class DeliveryPublic(BaseModel):
    mode: str
    url: str | None = None  # the secret is write-only


class AccountPublic(BaseModel):
    id: str
    unit_id: str
    region_id: str
    platform: str
    name: str
    handle: str | None
    opened_on: date | None
    responsible: dict
    delivery: DeliveryPublic
    status: str
    filing_due: date | None = None
    filing_calendar: Literal["official", "provisional"] | None = None  # what filing_due rests on
    filed_on: date | None = None
    reason: str | None = None
    meeting_ref: str | None = None
    deregistered_on: date | None = None
    closed_on: date | None = None
    client_id: str | None = None
    # Shown once, in the answer to registering a stream or nats account.
    client_secret: str | None = None

    @classmethod
    def of(cls, account: Account, client_secret: str | None = None) -> "AccountPublic":
        return cls(
            id=account.id, unit_id=account.unit_id, region_id=account.region_id, platform=account.platform,
            name=account.name, handle=account.handle, opened_on=account.opened_on, responsible=account.responsible,
            delivery=DeliveryPublic(mode=account.delivery_mode, url=account.webhook_url),
            status=account.status, filing_due=account.filing_due, filed_on=account.filed_on,
            filing_calendar=account.filing_calendar if account.filing_due else None,
            reason=account.reason, meeting_ref=account.meeting_ref, deregistered_on=account.deregistered_on,
            closed_on=account.closed_on,
            client_id=account.id if account.delivery_mode in CLIENT_MODES else None,
            client_secret=client_secret,
        )


class NatsCredentialsIn(Strict):
    """POST /v1/clients/nats-credentials: empty, or the client's own public user key (its seed
    never leaves the client)."""

    public_key: str | None = PField(default=None, max_length=100)


class NatsSubjects(BaseModel):
    events: str
    ack: str
    hello: str
    metrics: str


class NatsCredentials(BaseModel):
    """A matrix client's NATS credentials (docs/nats-client-protocol.md). `creds`: the .creds
    file, only when the service made the key (shown once, never stored)."""

    account_id: str
    public_key: str
    jwt: str
    creds: str | None = None
    servers: list[str]
    websocket: str | None = None
    subjects: NatsSubjects
    issued_at: datetime
    expires_at: datetime | None = None  # the JWT's end: ask again before (ACCOUNT_NATS_CLIENT_CREDS_TTL_DAYS)

    def body(self) -> dict:
        """The JSON answer: without `creds` when the client brought its own key."""
        return self.model_dump(mode="json", exclude={"creds"} if self.creds is None else None)


class Page(BaseModel):
    items: list
    next_cursor: str | None = None

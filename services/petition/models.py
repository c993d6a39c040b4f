"""Petition service tables and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

import json
from datetime import date, datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field as PField, field_validator
from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from govmedia_kit.audit import AuditTrail
from govmedia_kit.calendar_book import CalendarBook
from govmedia_kit.db import as_utc, new_id, utcnow
from govmedia_kit.directory import UnitDirectory
from govmedia_kit.outbox import kit_tables

from .domain import CATEGORIES, CHANNELS, STATUSES
from .sla import Pause

Category = Literal["consultation", "help", "suggestion", "complaint", "report", "petition"]
Channel = Literal["web", "app", "comment", "hotline", "wechat", "weibo", "email", "open311"]
Status = Literal["received", "accepted", "declined", "assigned", "returned", "in_progress", "waiting", "answered",
                 "closed", "rechecking", "reviewing", "linked"]
PeriodUnit = Literal["workdays", "calendar_days"]
# One list of names: the domain's tuples and the API's types must not drift apart.
assert get_args(Category) == CATEGORIES and get_args(Channel) == CHANNELS and get_args(Status) == STATUSES


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)
directory = UnitDirectory(Base.metadata)  # unit → region path and name (govmedia.account.unit.upserted)
calendar_book = CalendarBook(Base.metadata)  # ops' official calendar years (govmedia.account.calendar.published)


# --- tables -----------------------------------------------------------------

class SlaPolicy(Base, table=True):
    """One version of the time limits of a category. Rows are never changed: an edit is a new
    version, and a case keeps the version it was created under."""
    __tablename__ = "sla_policies"
    __table_args__ = (UniqueConstraint("category", "version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    category: str = Field(max_length=20, index=True)
    version: int
    code: str = Field(max_length=60)
    acceptance_days: int | None = None
    acceptance_unit: str | None = Field(default=None, max_length=20)
    handling_days: int
    handling_unit: str = Field(max_length=20)
    extension_max_days: int
    recheck_days: int
    recheck_unit: str = Field(max_length=20)
    warn_share: float
    note: str = Field(default="", max_length=500)
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)


class Petition(Base, table=True):
    __tablename__ = "petitions"
    __table_args__ = (Index("ix_petitions_open_due", "sla_running", "due_at"),
                      Index("ux_petitions_source_ref", "source_ref", unique=True))
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tracking_code: str = Field(max_length=16, unique=True)
    category: str = Field(max_length=20, index=True)
    channel: str = Field(max_length=20)
    title: str = Field(max_length=200)
    content: str = Field(sa_column=Column(Text, nullable=False))
    # Personal data: sealed (crypto.py), never logged, masked for whoever does not handle the case.
    contact_name_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    contact_phone_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    contact_id_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    contact_key: str | None = Field(default=None, max_length=64, index=True)  # blind index of the phone
    location: str | None = Field(default=None, max_length=200)
    lat: float | None = None
    lon: float | None = None
    service_code: str | None = Field(default=None, max_length=40)  # Open311 requests
    status: str = Field(default="received", max_length=20, index=True)
    # Where the case is: the desk that accepted it, the unit it is assigned to (转办).
    desk_unit_id: str | None = Field(default=None, max_length=32, index=True)
    desk_region_path: str | None = Field(default=None, max_length=400)
    unit_id: str | None = Field(default=None, max_length=32, index=True)
    region_path: str | None = Field(default=None, max_length=400, index=True)
    assigned_at: datetime | None = None
    accepted_at: datetime | None = None
    answered_at: datetime | None = None
    closed_at: datetime | None = None
    answer: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    answered_on_time: bool | None = None
    handling_workdays: int | None = None   # receipt → answer, in working days (statistics)
    decline_reason: str | None = Field(default=None, max_length=1000)
    redirect_to: str | None = Field(default=None, max_length=500)
    extension_days: int = 0
    extension_reason: str | None = Field(default=None, max_length=1000)
    rating: int | None = None
    rating_comment: str | None = Field(default=None, max_length=1000)
    recheck_level: int = 0                 # 1 after a 复查 request, 2 after a 复核 request
    featured_at: datetime | None = None    # the answer was chosen for publication (精选), once
    # Imported cases (hotline work orders, comments from accounts): the source's own id, unique,
    # so the same work order or comment imported twice is one case. Public intake leaves it empty.
    source_ref: str | None = Field(default=None, max_length=200)
    source_account_id: str | None = Field(default=None, max_length=32)  # the account a comment was left on
    imported_by: str | None = Field(default=None, max_length=100)       # the user or client that imported it
    duplicate_of: str | None = Field(default=None, max_length=32, index=True)
    matter_key: str = Field(default="", max_length=200)
    # The SLA: the policy version is fixed at creation; the clock of the current stage.
    policy_id: str = Field(foreign_key="sla_policies.id", max_length=32)
    sla_policy: str = Field(max_length=80)
    sla_version: int = 1
    sla_stage: str = Field(max_length=30)
    sla_unit: str = Field(max_length=20)
    sla_days: int
    sla_started_at: datetime
    sla_pauses: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))
    sla_warn_share: float = 0.8
    sla_last_day: date
    due_at: datetime = Field(index=True)
    warn_at: datetime
    sla_paused: bool = False
    sla_running: bool = True               # False once the stage is done (answered, declined …)
    breached_at: datetime | None = None
    # What the clock rests on: "official", or "provisional" while a year it counts over has no
    # notice yet; and the calendar's revision it was counted with (recompute.py counts it again).
    sla_calendar: str = Field(default="official", max_length=12, sa_column_kwargs={"server_default": "official"})
    sla_calendar_rev: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    def pauses(self) -> list[Pause]:
        return [Pause(datetime.fromisoformat(a), datetime.fromisoformat(b) if b else None)
                for a, b in json.loads(self.sla_pauses or "[]")]

    def set_pauses(self, pauses: list[Pause]) -> None:
        self.sla_pauses = json.dumps([[as_utc(p.start).isoformat(), as_utc(p.end).isoformat() if p.end else None]
                                      for p in pauses])


class TimelineEntry(Base, table=True):
    __tablename__ = "petition_timeline"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    petition_id: str = Field(foreign_key="petitions.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=100)  # a user id, "citizen" or "system"
    action: str = Field(max_length=30)
    note: str = Field(default="", max_length=2000)
    public: bool = True                  # shown to the citizen on tracking


class Timer(Base, table=True):
    """An SLA instant to act on: the warning, the breach, the 催办 and the 通报. Stored, so they
    survive restarts; `fired_at` is set in the transaction that emits, so each fires once."""
    __tablename__ = "petition_timers"
    __table_args__ = (Index("ix_petition_timers_pending", "fired_at", "due_at"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    petition_id: str = Field(foreign_key="petitions.id", index=True, max_length=32)
    kind: str = Field(max_length=20)    # warning | breach | reminder | notice | supervision_due
    stage: str = Field(max_length=30)
    due_at: datetime
    fired_at: datetime | None = None
    cancelled: bool = False  # unused: a replaced or cancelled timer is deleted (kept for the schema)


class Supervision(Base, table=True):
    """督办: opened by a breach (or by a supervisor), with the supervisor's notes and deadline."""
    __tablename__ = "petition_supervisions"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    petition_id: str = Field(foreign_key="petitions.id", index=True, max_length=32)
    unit_id: str | None = Field(default=None, max_length=32, index=True)
    region_path: str | None = Field(default=None, max_length=400)
    reason: str = Field(max_length=30)  # breach | manual
    status: str = Field(default="open", max_length=20, index=True)
    opened_by: str = Field(max_length=100)
    opened_at: datetime = Field(default_factory=utcnow)
    deadline: datetime | None = None
    reminded_at: datetime | None = None     # 催办
    public_notice_at: datetime | None = None  # 通报 flag
    closed_at: datetime | None = None


class AccountRef(Base, table=True):
    """The account service's ledger as far as comment imports need it: whose account it is
    (govmedia.account.account.{activated,updated,closed})."""
    __tablename__ = "petition_accounts"
    id: str = Field(primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)
    platform: str = Field(max_length=20)
    name: str = Field(default="", max_length=200)
    status: str = Field(default="active", max_length=20)
    updated_at: datetime = Field(default_factory=utcnow)


class SupervisionNote(Base, table=True):
    __tablename__ = "petition_supervision_notes"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    supervision_id: str = Field(foreign_key="petition_supervisions.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    author: str = Field(max_length=100)
    note: str = Field(max_length=2000)
    deadline: datetime | None = None


class Open311Key(Base, table=True):
    """A key of an Open311 client with its scopes (open311.SCOPES). Only the SHA-256 of the key
    is kept (256 random bits: a fast hash is enough); the key is shown once, at creation."""
    __tablename__ = "petition_open311_keys"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    name: str = Field(max_length=100)
    prefix: str = Field(max_length=16)              # the key's first characters, to tell keys apart
    key_hash: str = Field(max_length=64, unique=True)
    scopes: str = Field(max_length=200)             # space-separated
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    revoked_by: str | None = Field(default=None, max_length=100)


# Who made, and who revoked, which Open311 key: append-only, hash-chained (one stream).
open311_audit = AuditTrail(Base.metadata, name="petition_open311_key_audit")


# --- request and response bodies ---------------------------------------------

class Strict(BaseModel):
    model_config = {"extra": "forbid", "str_strip_whitespace": True}


class ContactIn(Strict):
    name: str = PField(min_length=1, max_length=50)
    phone: str = PField(min_length=1, max_length=30)
    id_number: str | None = PField(default=None, max_length=30)


class PetitionCreate(Strict):
    category: Category
    title: str = PField(min_length=1, max_length=200)
    content: str = PField(min_length=1, max_length=5000)
    channel: Channel
    contact: ContactIn | None = None
    location: str | None = PField(default=None, max_length=200)
    lat: float | None = PField(default=None, ge=-90, le=90)
    lon: float | None = PField(default=None, ge=-180, le=180)
    service_code: str | None = PField(default=None, max_length=40)


class HotlineImport(Strict):
    """A transfer from the government hotline (12345): its work order, as the hotline recorded it."""
    work_order_no: str = PField(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    category: Category
    title: str = PField(min_length=1, max_length=200)
    content: str = PField(min_length=1, max_length=5000)
    contact: ContactIn | None = None
    location: str | None = PField(default=None, max_length=200)
    lat: float | None = PField(default=None, ge=-90, le=90)
    lon: float | None = PField(default=None, ge=-180, le=180)
    # When the hotline took the citizen's call: ISO 8601 with an offset; absent means now. Parsed
    # and bounded by imports.received_moment (stable codes, not `validation_failed`).
    received_at: str | None = PField(default=None, json_schema_extra={"format": "date-time"},
                                     description="when the hotline received the call (ISO 8601 with offset)")


class CommentImport(Strict):
    """A comment left on one of the unit's accounts, named by the account and the comment's id
    on the platform."""
    account_id: str = PField(min_length=1, max_length=32)
    comment_id: str = PField(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$")
    category: Category
    title: str | None = PField(default=None, max_length=200)  # none: the start of the comment
    content: str = PField(min_length=1, max_length=5000)
    contact: ContactIn | None = None
    location: str | None = PField(default=None, max_length=200)


class ActionIn(Strict):
    """The body of a workflow action; which fields an action needs is checked by the action."""
    note: str | None = PField(default=None, max_length=2000)
    reason: str | None = PField(default=None, max_length=1000)
    redirect_to: str | None = PField(default=None, max_length=500)  # decline: where to go instead
    unit_id: str | None = PField(default=None, max_length=32)       # assign
    answer: str | None = PField(default=None, max_length=5000)      # answer
    days: int | None = PField(default=None, ge=1, le=366)           # extend
    decision: Literal["upheld", "revised"] | None = None            # decide (复查/复核)
    rating: int | None = PField(default=None, ge=1, le=5)           # rate (citizen)

    @field_validator("note", "reason", "redirect_to", "answer", "unit_id")
    @classmethod
    def _blank_is_none(cls, v):
        return v or None


class PolicyIn(Strict):
    """A new version of a category's time limits (ops)."""
    code: str | None = PField(default=None, min_length=1, max_length=60, pattern=r"^[a-z0-9_.\-]+$")
    acceptance_days: int | None = PField(default=None, ge=1, le=366)
    acceptance_unit: PeriodUnit | None = None
    handling_days: int = PField(ge=1, le=366)
    handling_unit: PeriodUnit
    extension_max_days: int = PField(ge=0, le=366)
    recheck_days: int = PField(default=30, ge=1, le=366)
    recheck_unit: PeriodUnit = "calendar_days"
    warn_share: float = PField(default=0.8, gt=0, le=1)
    note: str = PField(default="", max_length=500)


class SupervisionIn(Strict):
    note: str = PField(min_length=1, max_length=2000)
    deadline: date | None = None  # the unit is to report by 24:00 of this day


class ContactPublic(BaseModel):
    name: str | None
    phone: str | None
    id_number: str | None = None


class SlaPublic(BaseModel):
    policy: str
    policy_version: int = 1
    stage: str
    due_at: str
    warn_at: str
    paused: bool
    running: bool = True
    overdue: bool = False
    time_left_s: int | None = None  # seconds until due_at (negative when overdue); None once stopped
    # "provisional": the deadline counts over a year whose State Council notice is not loaded yet
    # (statutory holidays only); it is recomputed, and the timeline says so, once it is.
    calendar: Literal["official", "provisional"] = "official"


class PolicyPublic(BaseModel):
    id: str
    category: str
    version: int
    code: str
    acceptance_days: int | None
    acceptance_unit: str | None
    handling_days: int
    handling_unit: str
    extension_max_days: int
    recheck_days: int
    recheck_unit: str
    warn_share: float
    note: str
    created_by: str
    created_at: str


class PetitionReceipt(BaseModel):
    """The answer to the citizen: the tracking code is shown here and nowhere else. Never whether
    the case was linked to an earlier one (usecases.receipt)."""
    id: str
    tracking_code: str
    status: str
    category: str
    created_at: str
    sla: SlaPublic


class ImportReceipt(BaseModel):
    """The answer to an import: the case (new, or the one the same source id made before) and
    its tracking code for the citizen (told by the hotline, or in the reply to the comment)."""
    id: str
    tracking_code: str
    status: str
    category: str
    channel: str
    created: bool
    source_ref: str
    duplicate_of: str | None = None
    created_at: str
    sla: SlaPublic


class PetitionPublic(BaseModel):
    """A petition as staff see it; contact data masked unless the caller handles the case."""
    id: str
    category: str
    title: str
    content: str
    channel: str
    contact: dict | None  # name, phone (and id_number when given)
    location: str | None
    status: str
    unit_id: str | None
    unit_name: str | None = None
    desk_unit_id: str | None
    answer: str | None
    answered_at: str | None
    answered_on_time: bool | None
    decline_reason: str | None
    redirect_to: str | None
    extension_days: int
    extension_reason: str | None
    rating: int | None
    recheck_level: int
    featured_at: str | None = None
    duplicate_of: str | None
    source_ref: str | None = None          # an import's source: hotline:<work order>, comment:<account>:<id>
    source_account_id: str | None = None
    actions: list[str] = []
    sla: SlaPublic
    created_at: str
    updated_at: str


class PetitionStatus(BaseModel):
    """The public tracking answer: where the matter stands, nothing about who sent it."""
    tracking_code: str
    status: str
    category: str
    created_at: str
    sla: SlaPublic
    answer: str | None = None
    decline_reason: str | None = None
    redirect_to: str | None = None
    extension_reason: str | None = None
    rating: int | None = None
    can_recheck: bool = False
    timeline: list[dict] = []


class TimelineEntryPublic(BaseModel):
    at: str
    actor: str
    action: str
    note: str


class SupervisionPublic(BaseModel):
    id: str
    petition_id: str
    unit_id: str | None
    reason: str
    status: str
    opened_by: str
    opened_at: str
    deadline: str | None
    reminded_at: str | None
    public_notice_at: str | None
    notes: list[dict] = []


class Page(BaseModel):
    items: list
    next_cursor: str | None = None


class Open311KeyIn(Strict):
    name: str = PField(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    scopes: list[Literal["open311:read_full", "open311:write"]] = PField(min_length=1, max_length=2)


class Open311KeyPublic(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_by: str
    created_at: str
    revoked_at: str | None = None
    revoked_by: str | None = None
    key: str | None = None  # only in the answer that created it

"""Petition service tables and the shapes of its REST bodies.

Tables live in this service's own registry (its own metadata and migrations)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal, get_args

from pydantic import BaseModel, Field as PField
from sqlalchemy import Column, Text
from sqlmodel import Field, SQLModel
from sqlalchemy.orm import registry

from govmedia_kit.db import new_id, utcnow
from govmedia_kit.outbox import kit_tables
from govmedia_kit.public import mask_name, mask_phone

from .domain import CATEGORIES, CHANNELS, STATUSES, local_iso

Category = Literal["consultation", "help", "suggestion", "complaint", "report", "petition"]
Channel = Literal["web", "app", "comment", "hotline", "wechat", "weibo", "email"]
Status = Literal["received"]
# One list of names: the domain's tuples and the API's types must not drift apart.
assert get_args(Category) == CATEGORIES and get_args(Channel) == CHANNELS and get_args(Status) == STATUSES


class Base(SQLModel, registry=registry()):
    pass


tables = kit_tables(Base.metadata)


# --- tables -----------------------------------------------------------------

class Petition(Base, table=True):
    __tablename__ = "petitions"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tracking_code: str = Field(max_length=16, unique=True)
    category: str = Field(max_length=20, index=True)
    channel: str = Field(max_length=20)
    title: str = Field(max_length=200)
    content: str = Field(sa_column=Column(Text, nullable=False))
    # Personal data: never logged, masked in lists and for roles that do not answer the citizen.
    contact_name: str | None = Field(default=None, max_length=50)
    contact_phone: str | None = Field(default=None, max_length=20)
    location: str | None = Field(default=None, max_length=200)
    status: str = Field(default="received", max_length=20, index=True)
    # The SLA policy is copied onto the petition when it arrives, so a later change of
    # defaults never moves an existing deadline.
    sla_policy: str = Field(max_length=60)
    sla_stage: str = Field(max_length=30)
    sla_unit: str = Field(max_length=20)
    sla_days: int
    sla_last_day: date
    due_at: datetime = Field(index=True)
    warn_at: datetime
    sla_paused: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class TimelineEntry(Base, table=True):
    __tablename__ = "petition_timeline"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    petition_id: str = Field(foreign_key="petitions.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    actor: str = Field(max_length=100)  # a user id, or "citizen"
    action: str = Field(max_length=30)
    note: str = Field(default="", max_length=2000)


# --- request and response bodies ---------------------------------------------

class Strict(BaseModel):
    model_config = {"extra": "forbid", "str_strip_whitespace": True}


class ContactIn(Strict):
    name: str = PField(min_length=1, max_length=50)
    phone: str = PField(min_length=1, max_length=30)


class PetitionCreate(Strict):
    category: Category
    title: str = PField(min_length=1, max_length=200)
    content: str = PField(min_length=1, max_length=5000)
    channel: Channel
    contact: ContactIn | None = None
    location: str | None = PField(default=None, max_length=200)


class ContactPublic(BaseModel):
    name: str | None
    phone: str | None


class SlaPublic(BaseModel):
    policy: str
    stage: str
    due_at: str
    warn_at: str
    paused: bool

    @classmethod
    def of(cls, p: Petition) -> "SlaPublic":
        return cls(policy=p.sla_policy, stage=p.sla_stage, due_at=local_iso(p.due_at), warn_at=local_iso(p.warn_at),
                   paused=p.sla_paused)


class PetitionReceipt(BaseModel):
    """The answer to the citizen: the tracking code is shown here and nowhere else."""
    id: str
    tracking_code: str
    status: str
    category: str
    created_at: str
    sla: SlaPublic

    @classmethod
    def of(cls, p: Petition) -> "PetitionReceipt":
        return cls(id=p.id, tracking_code=p.tracking_code, status=p.status, category=p.category,
                   created_at=local_iso(p.created_at), sla=SlaPublic.of(p))


class PetitionPublic(BaseModel):
    """A petition as staff see it; contact data masked unless `reveal`."""
    id: str
    category: str
    title: str
    content: str
    channel: str
    contact: ContactPublic | None
    location: str | None
    status: str
    sla: SlaPublic
    created_at: str

    @classmethod
    def of(cls, p: Petition, reveal: bool = False) -> "PetitionPublic":
        contact = None
        if p.contact_name or p.contact_phone:
            contact = ContactPublic(
                name=p.contact_name if reveal else mask_name(p.contact_name),
                phone=p.contact_phone if reveal else mask_phone(p.contact_phone),
            )
        return cls(id=p.id, category=p.category, title=p.title, content=p.content, channel=p.channel, contact=contact,
                   location=p.location, status=p.status, sla=SlaPublic.of(p), created_at=local_iso(p.created_at))


class PetitionStatus(BaseModel):
    """The public tracking answer: where the matter stands, nothing about who sent it."""
    tracking_code: str
    status: str
    category: str
    created_at: str
    sla: SlaPublic

    @classmethod
    def of(cls, p: Petition) -> "PetitionStatus":
        return cls(tracking_code=p.tracking_code, status=p.status, category=p.category,
                   created_at=local_iso(p.created_at), sla=SlaPublic.of(p))


class TimelineEntryPublic(BaseModel):
    at: str
    actor: str
    action: str
    note: str

    @classmethod
    def of(cls, e: TimelineEntry) -> "TimelineEntryPublic":
        return cls(at=local_iso(e.at), actor=e.actor, action=e.action, note=e.note)


class Page(BaseModel):
    items: list
    next_cursor: str | None = None

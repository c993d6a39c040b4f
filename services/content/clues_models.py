"""News clues (报料) from the public: tables and the shapes of their bodies.

A citizen's contact data is personal data: sealed at rest (clues.py: the content keyring,
each value bound to its row), never logged, never on the bus, masked in lists, shown
unmasked only on the one clue to the unit's editors who handle it, and never in the public
tracking answer."""
from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field as PField, field_validator
from sqlalchemy import Column, Text
from sqlmodel import Field

from govmedia_kit.db import iso, new_id, utcnow
from govmedia_kit.public import mask_name, mask_phone

from .models import Base, Strict, TargetsIn, _blank_is_none

ClueStatus = Literal["new", "accepted", "declined", "duplicate", "drafted"]
Decision = Literal["accept", "decline", "duplicate"]


# --- tables -----------------------------------------------------------------

class Clue(Base, table=True):
    __tablename__ = "clues"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    unit_id: str = Field(max_length=32, index=True)  # the unit the citizen addressed
    tracking_code: str = Field(max_length=16, unique=True)
    title: str = Field(max_length=200)
    content: str = Field(sa_column=Column(Text, nullable=False))
    location: str | None = Field(default=None, max_length=200)
    # Personal data: sealed (clues.seal_contact, bound to this row), never logged, masked in
    # lists and for everyone but the unit's editors.
    contact_name_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    contact_phone_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    status: str = Field(default="new", max_length=20, index=True)
    decline_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    duplicate_of: str | None = Field(default=None, max_length=32)
    draft_id: str | None = Field(default=None, max_length=32)
    triaged_by: str | None = Field(default=None, max_length=32)
    triaged_at: datetime | None = None
    drafted_by: str | None = Field(default=None, max_length=32)
    drafted_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class ClueStep(Base, table=True):
    """Who did what to a clue, and when (the citizen's submission is the first step)."""

    __tablename__ = "clue_steps"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    clue_id: str = Field(foreign_key="clues.id", index=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)
    actor_id: str = Field(max_length=32)  # a user id, or "citizen"
    actor_name: str = Field(default="", max_length=100)
    action: str = Field(max_length=20)  # received | accepted | declined | duplicate | drafted
    note: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


# --- request and response bodies ---------------------------------------------

class ContactIn(Strict):
    name: str = PField(min_length=1, max_length=50)
    phone: str = PField(min_length=1, max_length=30)


class ClueCreate(Strict):
    """The public intake: addressed to a unit; contact optional, private when given."""

    unit_id: str = PField(min_length=1, max_length=32)
    title: str = PField(min_length=1, max_length=200)
    content: str = PField(min_length=1, max_length=5000)
    location: str | None = PField(default=None, max_length=200)
    contact: ContactIn | None = None

    @field_validator("location", mode="before")
    @classmethod
    def blank_is_none(cls, value):
        return _blank_is_none(value)


class ClueTriage(Strict):
    """accept; decline with a `reason`; or mark a `duplicate` of another clue (`duplicate_of`)."""

    decision: Decision
    reason: str | None = PField(default=None, max_length=1000)
    duplicate_of: str | None = PField(default=None, max_length=32)

    @field_validator("reason", "duplicate_of", mode="before")
    @classmethod
    def blank_is_none(cls, value):
        return _blank_is_none(value)


class ClueDraftIn(Strict):
    """Turning an accepted clue into a draft: the clue's title and text unless given."""

    title: str | None = PField(default=None, min_length=1, max_length=200)
    body: str | None = PField(default=None, min_length=1, max_length=200_000)
    targets: TargetsIn | None = None


class ClueReceipt(BaseModel):
    """The answer to the citizen: the tracking code is shown here and nowhere else."""

    tracking_code: str
    status: str
    created_at: str

    @classmethod
    def of(cls, c: Clue) -> "ClueReceipt":
        return cls(tracking_code=c.tracking_code, status=c.status, created_at=iso(c.created_at))


class ClueTrack(BaseModel):
    """The public tracking answer: where the clue stands, nothing about who sent it."""

    tracking_code: str
    status: str
    unit_name: str | None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, c: Clue, unit_name: str | None) -> "ClueTrack":
        return cls(tracking_code=c.tracking_code, status=c.status, unit_name=unit_name or None,
                   created_at=iso(c.created_at), updated_at=iso(c.updated_at))


class ContactPublic(BaseModel):
    name: str | None
    phone: str | None


class ClueStepPublic(BaseModel):
    at: str
    actor_id: str
    actor_name: str
    action: str
    note: str

    @classmethod
    def of(cls, e: ClueStep) -> "ClueStepPublic":
        return cls(at=iso(e.at), actor_id=e.actor_id, actor_name=e.actor_name, action=e.action, note=e.note)


class CluePublic(BaseModel):
    """A clue as the unit's staff see it: contact masked unless `contact_revealed`."""

    id: str
    unit_id: str
    title: str
    content: str
    location: str | None
    contact: ContactPublic | None
    contact_revealed: bool
    status: str
    decline_reason: str | None
    duplicate_of: str | None
    draft_id: str | None
    triaged_by: str | None
    triaged_at: str | None
    drafted_by: str | None
    drafted_at: str | None
    created_at: str
    updated_at: str
    steps: list[ClueStepPublic] | None = None  # on GET /v1/clues/{id}

    @classmethod
    def of(cls, c: Clue, opened: tuple[str | None, str | None], reveal: bool = False,
           steps: list[ClueStep] | None = None) -> "CluePublic":
        """`opened`: the clue's contact (name, phone) opened from its sealed form (clues.contact_of)."""
        name, phone = opened
        contact = None
        if name or phone:
            contact = ContactPublic(name=name if reveal else mask_name(name),
                                    phone=phone if reveal else mask_phone(phone))
        return cls(id=c.id, unit_id=c.unit_id, title=c.title, content=c.content, location=c.location,
                   contact=contact, contact_revealed=reveal and contact is not None, status=c.status,
                   decline_reason=c.decline_reason, duplicate_of=c.duplicate_of, draft_id=c.draft_id,
                   triaged_by=c.triaged_by, triaged_at=iso(c.triaged_at), drafted_by=c.drafted_by,
                   drafted_at=iso(c.drafted_at), created_at=iso(c.created_at), updated_at=iso(c.updated_at),
                   steps=None if steps is None else [ClueStepPublic.of(e) for e in steps])

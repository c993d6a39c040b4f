"""Tables and REST bodies of inspections (检查): check rounds, results with the national
single-item vetoes, rectification by a deadline (限时整改) and measures.

The tables sit on the account service's `Base`, so its migrations (0004_inspections) own them."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field

from govmedia_kit.db import new_id, utcnow

from .models import Base, Strict

# The national inspections' single-item vetoes (单项否决), DOMAIN.md Accounts.
VETOES = ("no_update_two_weeks", "no_interaction", "security_incident", "serious_wording_error")
MEASURES = ("deletion_order", "interview", "warning", "public_notice", "closure_order")
# The accounts a round checks: those the ledger holds as running (opened, or filed and active).
INSPECTED_STATES = ("opened", "active")

Veto = Literal["no_update_two_weeks", "no_interaction", "security_incident", "serious_wording_error"]
MeasureKind = Literal["deletion_order", "interview", "warning", "public_notice", "closure_order"]


# --- tables -----------------------------------------------------------------

class Inspection(Base, table=True):
    """A check round opened by the regulator over a region subtree (all accounts or a sample)."""

    __tablename__ = "inspections"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    title: str = Field(max_length=200)
    region_id: str = Field(foreign_key="regions.id", index=True)
    scope: str = Field(max_length=10)  # all | sample
    sample_size: int | None = None
    # Stored even when drawn by the service, so the sample can be reproduced and audited.
    seed: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    population: int = 0  # accounts in the subtree when the round was opened
    opened_by: str = Field(max_length=32)
    opened_at: datetime = Field(default_factory=utcnow)


class InspectionAccount(Base, table=True):
    """One account checked in a round and its latest result; earlier results stay in `previous`."""

    __tablename__ = "inspection_accounts"
    __table_args__ = (UniqueConstraint("inspection_id", "account_id", name="uq_inspection_accounts_round_account"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    inspection_id: str = Field(foreign_key="inspections.id", index=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    unit_id: str = Field(max_length=32, index=True)  # the account's unit, for who may see the row
    passed: bool | None = None  # None: not checked yet
    veto: str | None = Field(default=None, max_length=40)
    notes: str | None = Field(default=None, max_length=2000)
    recorded_by: str | None = Field(default=None, max_length=32)
    recorded_at: datetime | None = None
    previous: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))


class Rectification(Base, table=True):
    """A rectification ordered for a failed account, due by a date (Asia/Shanghai)."""

    __tablename__ = "rectifications"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    inspection_id: str = Field(foreign_key="inspections.id", index=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    unit_id: str = Field(max_length=32, index=True)
    deadline: date = Field(index=True)
    requirement: str = Field(max_length=2000)
    ordered_by: str = Field(max_length=32)
    ordered_at: datetime = Field(default_factory=utcnow)
    done_at: datetime | None = None
    done_by: str | None = Field(default=None, max_length=32)
    done_note: str | None = Field(default=None, max_length=2000)
    overdue_flagged_at: datetime | None = None  # set once, when the overdue event is emitted


class InspectionMeasure(Base, table=True):
    """A measure the regulator takes on an account of a round: deletion, interview (约谈)…"""

    __tablename__ = "inspection_measures"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    inspection_id: str = Field(foreign_key="inspections.id", index=True)
    account_id: str = Field(foreign_key="accounts.id", index=True)
    unit_id: str = Field(max_length=32, index=True)
    kind: str = Field(max_length=20)
    note: str | None = Field(default=None, max_length=2000)
    document_ref: str | None = Field(default=None, max_length=200)
    recorded_by: str = Field(max_length=32)
    recorded_at: datetime = Field(default_factory=utcnow)


# --- request bodies -----------------------------------------------------------

class InspectionCreate(Strict):
    title: str = PField(min_length=1, max_length=200)
    region_id: str = PField(min_length=1)
    scope: Literal["all", "sample"]
    # Range checked by the use case, so a bad size gets its own stable code.
    sample_size: int | None = None
    seed: int | None = PField(default=None, ge=0, le=2**63 - 1)


class ResultIn(Strict):
    account_id: str = PField(min_length=1)
    passed: bool
    veto: Veto | None = None
    notes: str | None = PField(default=None, max_length=2000)


class RectificationIn(Strict):
    account_id: str = PField(min_length=1)
    deadline: date
    requirement: str = PField(min_length=1, max_length=2000)


class RectificationDoneIn(Strict):
    note: str = PField(min_length=1, max_length=2000)


class MeasureIn(Strict):
    account_id: str = PField(min_length=1)
    kind: MeasureKind
    note: str | None = PField(default=None, max_length=2000)
    document_ref: str | None = PField(default=None, max_length=200)


# --- response bodies ----------------------------------------------------------

class ResultPublic(BaseModel):
    passed: bool
    veto: str | None
    notes: str | None
    recorded_by: str
    recorded_at: datetime


class EntryPublic(BaseModel):
    account_id: str
    account_name: str
    platform: str
    unit_id: str
    result: ResultPublic | None  # None: not checked yet
    previous: list[ResultPublic] = []  # replaced results, oldest first


class RectificationPublic(BaseModel):
    id: str
    inspection_id: str
    account_id: str
    unit_id: str
    deadline: date
    requirement: str
    ordered_by: str
    ordered_at: datetime
    done_at: datetime | None
    done_by: str | None
    done_note: str | None
    overdue: bool  # not done and the deadline has passed (Asia/Shanghai)
    overdue_flagged_at: datetime | None


class MeasurePublic(BaseModel):
    id: str
    inspection_id: str
    account_id: str
    unit_id: str
    kind: str
    note: str | None
    document_ref: str | None
    recorded_by: str
    recorded_at: datetime


class InspectionSummary(BaseModel):
    """A round and its figures (for a unit's user: over that unit's accounts only)."""

    id: str
    title: str
    region_id: str
    scope: str
    sample_size: int | None
    seed: int | None
    population: int
    opened_by: str
    opened_at: datetime
    accounts_total: int
    checked: int
    passed: int
    failed: int
    pass_rate: float | None  # passed / checked, 4 places; None until something is checked


class InspectionPublic(InspectionSummary):
    accounts: list[EntryPublic]
    rectifications: list[RectificationPublic]
    measures: list[MeasurePublic]

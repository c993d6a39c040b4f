"""Tables and bodies of account activity: the last publication of each account, the items it
published (for monthly counts) and where it stands on the sleeping-account ladder.

Kept apart from models.py so the activity part can change without touching the ledger."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlmodel import Field

from govmedia_kit.db import utcnow

from .models import Base

# The ladder of one county's rule (REFERENCES.md), in calendar days without an update:
# warn the editor-in-chief, then the principal, then flag the account dormant (the national
# inspections veto an account not updated in the two weeks before a check).
STAGES = (("warn_chief_editor", 10), ("warn_principal", 12), ("dormant", 14))
STAGE_ORDER = {name: i for i, (name, _) in enumerate(STAGES)}


class AccountActivity(Base, table=True):
    """One row per account that published or was watched. No foreign key to accounts: an
    event must never be dead-lettered because of the order in which services learnt things."""

    __tablename__ = "account_activity"
    account_id: str = Field(primary_key=True, max_length=32)
    last_published_at: datetime | None = Field(default=None)
    last_item_id: str | None = Field(default=None, max_length=64)
    # The highest step of the ladder announced for the current silence (None: none yet);
    # reset when the account publishes again, so each step goes out once per silence.
    stage: str | None = Field(default=None, max_length=20, index=True)
    stage_at: datetime | None = None
    dormant: bool = False
    dormant_since: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class PublishedItem(Base, table=True):
    """An item an account published, once per (account, item) whatever the versions or
    redeliveries: the monthly count is the number of these rows per local month."""

    __tablename__ = "account_published_items"
    account_id: str = Field(primary_key=True, max_length=32)
    item_id: str = Field(primary_key=True, max_length=64)
    month: str = Field(max_length=7)  # YYYY-MM in Asia/Shanghai, of the first acknowledged publish
    first_published_at: datetime


# --- bodies ----------------------------------------------------------------------------------

class MonthCount(BaseModel):
    month: str
    items: int


class ActivityPublic(BaseModel):
    account_id: str
    unit_id: str
    status: str
    last_published_at: str | None
    silent_since: str | None  # what the silence counts from: last publication, else opening/registration
    silent_days: int | None
    stage: str | None
    dormant: bool
    dormant_since: str | None
    monthly: list[MonthCount]


class DormantEntry(BaseModel):
    account_id: str
    unit_id: str
    region_id: str
    platform: str
    name: str
    stage: str
    silent_days: int | None
    last_published_at: str | None
    dormant: bool
    dormant_since: str | None
    stage_at: str | None

"""Tables and bodies of notices (提醒): see notices.py."""
from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import UniqueConstraint
from sqlmodel import Field

from govmedia_kit.db import new_id, utcnow

from .models import Base


class Notice(Base, table=True):
    __tablename__ = "notices"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    # What it is about, e.g. "dormancy.warn_chief_editor", "filing.overdue"; with `about_id`
    # unique, so a watch that runs twice never tells anyone twice.
    kind: str = Field(max_length=60, index=True)
    about_id: str = Field(max_length=64)  # the account, filing or rectification
    account_id: str | None = Field(default=None, max_length=32, index=True)
    title: str = Field(max_length=200)
    body: str = Field(max_length=2000)
    unit_id: str = Field(max_length=32, index=True)
    region_path: str = Field(max_length=400, index=True)  # of the unit's region
    # Addressees as "|role|role|" (a LIKE on both databases): roles of the unit, and region
    # roles whose subtree holds the unit.
    unit_roles: str = Field(default="", max_length=200)
    region_roles: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow, index=True)

    __table_args__ = (UniqueConstraint("kind", "about_id", name="uq_notices_kind_about"),)


class NoticeRead(Base, table=True):
    __tablename__ = "notice_reads"
    notice_id: str = Field(primary_key=True, foreign_key="notices.id", max_length=32)
    user_id: str = Field(primary_key=True, max_length=32)
    read_at: datetime = Field(default_factory=utcnow)


class NoticePublic(BaseModel):
    id: str
    kind: str
    about_id: str
    account_id: str | None
    unit_id: str
    title: str
    body: str
    created_at: datetime
    read: bool

"""Tables and REST bodies of the working-day calendar this service owns (calendar.py): the
years ops loaded from the State Council's notices, every version kept.

`calendar_book.table` (`calendar_years`, the kit's) holds each year's version in force, as the
other services keep it too; `calendar_year_versions` here is the history: who loaded what, when."""
from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import BaseModel, Field as PField
from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field

from govmedia_kit.calendar_book import CalendarBook
from govmedia_kit.db import new_id, utcnow

from .models import Base, Strict

calendar_book = CalendarBook(Base.metadata)


class CalendarYearVersion(Base, table=True):
    """One load of a year's notice by ops. Never changed: a correction is a new version."""

    __tablename__ = "calendar_year_versions"
    __table_args__ = (UniqueConstraint("year", "version", name="uq_calendar_year_versions_year_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    year: int = Field(index=True)
    version: int
    revision: int = Field(unique=True)  # the calendar's change counter over all years
    holidays: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    workdays: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    notice_number: str = Field(max_length=200)
    notice_published_on: date
    loaded_by: str = Field(max_length=32)
    loaded_at: datetime = Field(default_factory=utcnow)


class NoticeIn(Strict):
    number: str = PField(min_length=1, max_length=200)  # e.g. 国办发明电〔2026〕…号
    published_on: date


class CalendarYearIn(Strict):
    """`PUT /v1/calendar/years/{year}`: the notice as published, like the seed file's years.
    `holidays`: the rest days that fall on weekdays; `workdays`: the make-up working days that
    fall on weekends (调休上班)."""
    holidays: list[date] = PField(max_length=366)
    workdays: list[date] = PField(default_factory=list, max_length=366)
    notice: NoticeIn


class CalendarYearPublic(BaseModel):
    year: int
    # Where the year comes from: an official notice loaded by ops, the seed file, the
    # chinesecalendar library, or provisional (the holiday law's days off only).
    source: Literal["notice", "file", "library", "provisional"]
    calendar: Literal["official", "provisional"]
    holidays: list[date]   # rest days on weekdays
    workdays: list[date]   # working days on weekends
    version: int | None = None          # notices: this year's version
    revision: int | None = None
    notice: NoticeIn | None = None
    loaded_by: str | None = None
    loaded_at: datetime | None = None
    law: str | None = None              # provisional years: the law whose days off they hold


class CalendarYearVersionPublic(BaseModel):
    year: int
    version: int
    revision: int
    holidays: list[date]
    workdays: list[date]
    notice: NoticeIn
    loaded_by: str
    loaded_at: datetime

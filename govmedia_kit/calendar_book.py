"""The official years ops loaded from the State Council's notices, as every service that counts
working days keeps them (the account service and the petition service).

One owner: the account service takes `PUT /v1/calendar/years/{year}` from province-level ops,
keeps every version, writes the year into its own `calendar_years` table and announces it on
`govmedia.account.calendar.published` in the same transaction (outbox). Every other service
that counts working days keeps the same table from that event (inbox: applied once; a year's
highest `revision` wins, so a late or repeated event changes nothing). Each process then
computes with what its own database holds: before a deadline is counted it reads the newest
revision (one primary-key-ordered read) and, when it moved, loads the years into
`workdays.install_notices`. A replica started later reads the same rows; a service that was
down gets the events it missed from its durable consumer.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import date, datetime
from typing import Awaitable, Callable

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, and_, func, or_, select

from . import workdays
from .bus import Consumer
from .db import as_utc, upsert_insert
from .events import Event
from .runtime import wait_any
from .workdays import YearTable

log = logging.getLogger(__name__)
CALENDAR_PUBLISHED = "govmedia.account.calendar.published"
WAKE = "calendar_wake"          # rt.state: set when this process stored a newer year
SAFETY_RECOUNT_S = 3600.0       # besides every change: what a replica counted before it saw one


@dataclass(frozen=True)
class NoticeYear:
    """One year as ops loaded it: the notice's rest days on weekdays and working weekend days."""
    year: int
    revision: int
    version: int
    holidays: tuple[date, ...]
    workdays: tuple[date, ...]
    notice_number: str
    notice_published_on: date | None
    loaded_by: str
    loaded_at: datetime

    @property
    def table(self) -> YearTable:
        return YearTable(frozenset(self.holidays), frozenset(self.workdays))

    def event(self):
        from govmedia.events.v1 import events_pb2 as ev  # generated code; imported where used

        return ev.CalendarYearPublished(
            year=self.year, revision=self.revision, version=self.version,
            holidays=[d.isoformat() for d in self.holidays], workdays=[d.isoformat() for d in self.workdays],
            notice_number=self.notice_number,
            notice_published_on=self.notice_published_on.isoformat() if self.notice_published_on else "",
            loaded_by=self.loaded_by, loaded_at=as_utc(self.loaded_at).isoformat())

    @classmethod
    def from_event(cls, msg) -> "NoticeYear":
        return cls(msg.year, msg.revision, msg.version, tuple(map(date.fromisoformat, msg.holidays)),
                   tuple(map(date.fromisoformat, msg.workdays)), msg.notice_number,
                   date.fromisoformat(msg.notice_published_on) if msg.notice_published_on else None,
                   msg.loaded_by, datetime.fromisoformat(msg.loaded_at))


class CalendarBook:
    def __init__(self, metadata: MetaData):
        self.table = Table(
            "calendar_years",
            metadata,
            Column("year", Integer, primary_key=True, autoincrement=False),
            Column("revision", Integer, nullable=False, index=True),
            Column("version", Integer, nullable=False),
            Column("holidays", Text, nullable=False),  # JSON list of YYYY-MM-DD
            Column("workdays", Text, nullable=False),
            Column("notice_number", String(200), nullable=False),
            Column("notice_published_on", String(10), nullable=True),
            Column("loaded_by", String(100), nullable=False),
            Column("loaded_at", DateTime(timezone=True), nullable=False),
        )

    async def store(self, session, year: NoticeYear) -> bool:
        """Keep `year` unless a newer (or the same) revision is here; True when it was kept."""
        held = await session.scalar(select(self.table.c.revision).where(self.table.c.year == year.year))
        if held is not None and held >= year.revision:
            return False
        values = dict(revision=year.revision, version=year.version,
                      holidays=json.dumps([d.isoformat() for d in year.holidays]),
                      workdays=json.dumps([d.isoformat() for d in year.workdays]),
                      notice_number=year.notice_number,
                      notice_published_on=year.notice_published_on.isoformat() if year.notice_published_on else None,
                      loaded_by=year.loaded_by, loaded_at=as_utc(year.loaded_at))
        await session.execute(upsert_insert(session, self.table).values(year=year.year, **values)
                              .on_conflict_do_update(index_elements=["year"], set_=values))
        return True

    async def revision(self, session) -> int:
        return int(await session.scalar(select(func.max(self.table.c.revision))) or 0)

    async def years(self, session) -> list[NoticeYear]:
        rows = (await session.execute(select(self.table).order_by(self.table.c.year))).mappings().all()
        return [NoticeYear(r["year"], r["revision"], r["version"], tuple(map(date.fromisoformat, json.loads(r["holidays"]))),
                           tuple(map(date.fromisoformat, json.loads(r["workdays"]))), r["notice_number"],
                           date.fromisoformat(r["notice_published_on"]) if r["notice_published_on"] else None,
                           r["loaded_by"], as_utc(r["loaded_at"])) for r in rows]

    async def refresh(self, session) -> workdays.WorkCalendar:
        """This process's calendar with what the database holds now (reloaded only when the
        revision moved): call before counting a deadline."""
        revision = await self.revision(session)
        if revision != workdays.notices_revision():
            years = await self.years(session)
            workdays.install_notices(revision, {y.year: y.table for y in years})
        return workdays.default_calendar()

    def consumer(self, service: str) -> Consumer:
        """Keeps the years from the owner's events; a newer year wakes this process's `watch`."""
        async def handle(rt, session, event: Event) -> None:
            from govmedia.events.v1 import events_pb2 as ev

            if await self.store(session, NoticeYear.from_event(event.parse(ev.CalendarYearPublished))):
                woken(rt).set()

        return Consumer(f"{service}-calendar", CALENDAR_PUBLISHED, handle)

    async def watch(self, rt, stop: asyncio.Event, recount: Callable[[], Awaitable[int]], poll_s: float) -> None:
        """A service worker: `recount` the deadlines at start-up, whenever this replica's calendar
        changes (looked for every `poll_s`, and at once on `wake`), and hourly besides, for a
        deadline another replica counted on a calendar it had not yet refreshed."""
        wake = woken(rt)
        counted_with, counted_at = None, 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            wake.clear()
            try:
                async with rt.db.session() as s:
                    cal = await self.refresh(s)
                if cal is not counted_with or loop.time() - counted_at >= SAFETY_RECOUNT_S:
                    await recount()
                    counted_with, counted_at = cal, loop.time()
            except Exception:
                log.exception("recounting deadlines on the calendar failed; retrying")
            if await wait_any((stop, wake), poll_s):
                return


def woken(rt) -> asyncio.Event:
    """The event that wakes this process's `watch` (set it once a newer year is stored)."""
    return rt.state.setdefault(WAKE, asyncio.Event())


def stale_deadlines(cal: workdays.WorkCalendar, notices: list[NoticeYear], *, basis, revision, last_day,
                    starts_before: Callable[[date], object]):
    """WHERE clause for deadlines to count again: those resting on a provisional year that is
    official now (notice, seed file or a newer library), and those counted before a notice year
    they reach was loaded or corrected. `basis`, `revision` and `last_day` are the columns
    holding what the deadline rests on, the calendar revision it was counted with and its last
    day; `starts_before(day)` says the count started before `day`."""
    first = cal.first_provisional_year()
    became_official = basis == workdays.PROVISIONAL
    if first is not None:
        became_official = and_(became_official, last_day < date(first, 1, 1))
    changed = [and_(revision < y.revision, last_day >= date(y.year, 1, 1), starts_before(date(y.year + 1, 1, 1)))
               for y in notices]
    return or_(became_official, *changed)


def why_moved(notices: list[NoticeYear], first_year: int, last_year: int, provisional: bool) -> tuple[str, str]:
    """For a recounted deadline: the numbers of the notices of the years it spans ("" if another
    source made them official), and the words that close its history entry."""
    numbers = "、".join(y.notice_number for y in notices if first_year <= y.year <= last_year)
    words = f"{'（仍为暂定）' if provisional else ''}（{'依据' + numbers if numbers else '官方节假日安排已确定'}）"
    return numbers, words


class ProvisionalDeadlines:
    """What ops watch while deadlines rest on a provisional year, in each service that counts
    them: `govmedia_calendar_provisional_deadlines` (how many are open),
    `govmedia_calendar_provisional_first_due_days` (days until the first of them; -1: none), and
    a warning logged once a day naming the year whose notice to load."""

    def __init__(self, gauges, what: str):
        self.gauges, self.what, self.warned_on = gauges, what, None
        gauges.gauge("govmedia_calendar_provisional_deadlines", "Open deadlines resting on a provisional calendar year",
                     "{deadline}")
        # Exported as govmedia_calendar_provisional_first_due_days (the unit is appended).
        gauges.gauge("govmedia_calendar_provisional_first_due", "Days until the earliest provisional deadline (-1: none)",
                     "d")

    def report(self, cal: workdays.WorkCalendar, today: date, count: int, first_due: date | None) -> None:
        self.gauges.set("govmedia_calendar_provisional_deadlines", count)
        self.gauges.set("govmedia_calendar_provisional_first_due", (first_due - today).days if first_due else -1)
        if not count or self.warned_on == today:
            return
        self.warned_on = today
        year = cal.first_provisional_year()
        log.warning("%d open %s deadlines rest on the provisional calendar of %s (the first falls due on %s): "
                    "load the State Council's notice with PUT /v1/calendar/years/%s on the account service",
                    count, self.what, year, first_due, year)

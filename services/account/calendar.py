"""The working-day calendar of the platform, owned by this service (one calendar for all).

Province-level ops load each year's State Council notice (`PUT /v1/calendar/years/{year}`, or
gRPC `PutCalendarYear`) as soon as it is published, without a release. Each load is a new
version (who, when, which notice) in `calendar_year_versions`; the version in force goes into
`calendar_years` and onto the bus (`govmedia.account.calendar.published`) in the same
transaction, and every service that counts working days keeps it from there
(`govmedia_kit/calendar_book.py`). Deadlines counted on the provisional calendar of that year,
here (filings, `accounts.recount_filings`) and in the petition service, are then counted again.

A notice that cannot be right is refused with a stable code and nothing is stored: a date
outside the year, a day both off and worked, a weekend listed as a rest day or a weekday as a
make-up working day, a statutory holiday of the law missing, a past year.
"""
from __future__ import annotations

import logging
from datetime import date

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from govmedia_kit import holiday_law, workdays
from govmedia_kit.auth import Principal
from govmedia_kit.calendar_book import CALENDAR_PUBLISHED, NoticeYear, woken
from govmedia_kit.db import utcnow
from govmedia_kit.errors import conflict, invalid, not_found
from govmedia_kit.runtime import Runtime

from .calendar_models import (
    CalendarYearIn, CalendarYearPublic, CalendarYearVersion, CalendarYearVersionPublic, NoticeIn, calendar_book,
)

log = logging.getLogger(__name__)


def check_notice(year: int, data: CalendarYearIn, today: date) -> tuple[tuple[date, ...], tuple[date, ...]]:
    """The notice's days, sorted and without repeats, or a refusal naming the first problem."""
    if year < today.year:
        raise invalid("calendar_year_past", f"{year} 年已经过去，不能再载入节假日安排", {"year": year})
    last = today.year + workdays.PROVISIONAL_YEARS_AHEAD
    if year > last:
        raise invalid("calendar_year_out_of_range", f"只能载入 {last} 年及以前的节假日安排", {"year": year})
    if data.notice.published_on > today:
        raise invalid("notice_date_in_future", "通知的发布日期不能晚于今天", {"field": "notice.published_on"})
    holidays, working = sorted(set(data.holidays)), sorted(set(data.workdays))
    for field, days in (("holidays", holidays), ("workdays", working)):
        for day in days:
            if day.year != year:
                raise invalid("date_outside_year", f"{day.isoformat()} 不在 {year} 年内", {"field": field, "date": day.isoformat()})
    for day in set(holidays) & set(working):
        raise invalid("date_both_holiday_and_workday", f"{day.isoformat()} 不能既放假又上班", {"date": day.isoformat()})
    for day in holidays:
        if day.weekday() >= 5:
            raise invalid("weekend_listed_as_holiday",
                          f"{day.isoformat()} 是周末：holidays 只列工作日中的放假日", {"field": "holidays", "date": day.isoformat()})
    for day in working:
        if day.weekday() < 5:
            raise invalid("weekday_listed_as_workday",
                          f"{day.isoformat()} 是工作日：workdays 只列周末调休上班日", {"field": "workdays", "date": day.isoformat()})
    # Every day off the law gives (on a weekday) is off in any notice: a missing one is a typing error.
    statutory = holiday_law.statutory_holidays(year)
    missing = sorted(d for d in statutory if d.weekday() < 5 and d not in holidays)
    if missing:
        law = holiday_law.law_in_force(year)
        raise invalid("statutory_holiday_missing",
                      f"{missing[0].isoformat()}（{statutory[missing[0]]}）是{law.title}"
                      f"{law.article}规定的全体公民放假日，通知中不应缺少",
                      {"field": "holidays", "dates": [d.isoformat() for d in missing]})
    return tuple(holidays), tuple(working)


async def load_year(rt: Runtime, who: Principal, year: int, data: CalendarYearIn) -> CalendarYearPublic:
    """Load (or correct) a year from its notice; loading the same notice again changes nothing."""
    who.require_province("ops")
    holidays, working = check_notice(year, data, workdays.local_date(utcnow()))
    async with rt.unit_of_work() as s:
        # Locked: two loads at once get consecutive revisions, never the same one.
        held = (await s.exec(select(CalendarYearVersion).order_by(CalendarYearVersion.revision.desc())
                             .limit(1).with_for_update())).first()
        current = (await s.exec(select(CalendarYearVersion).where(CalendarYearVersion.year == year)
                                .order_by(CalendarYearVersion.version.desc()).limit(1))).first()
        same = current is not None and (tuple(current.holidays), tuple(current.workdays), current.notice_number,
                                        current.notice_published_on) == (
            tuple(d.isoformat() for d in holidays), tuple(d.isoformat() for d in working), data.notice.number,
            data.notice.published_on)
        if not same:
            current = CalendarYearVersion(
                year=year, version=(current.version + 1) if current else 1, revision=(held.revision + 1) if held else 1,
                holidays=[d.isoformat() for d in holidays], workdays=[d.isoformat() for d in working],
                notice_number=data.notice.number, notice_published_on=data.notice.published_on,
                loaded_by=who.subject, loaded_at=utcnow())
            s.add(current)
            try:
                await s.flush()
            except IntegrityError:  # another load took this revision first (no row to lock yet)
                raise conflict("calendar_load_conflict", "另一份节假日安排正在载入，请稍后重试") from None
            loaded = _notice_year(current)
            await calendar_book.store(s, loaded)
            await rt.outbox.emit(s, CALENDAR_PUBLISHED, loaded.event(), str(year))
        await calendar_book.refresh(s)
    if not same:
        log.info("calendar %d loaded from %s by %s (version %d, revision %d)", year, data.notice.number, who.subject,
                 current.version, current.revision)
        woken(rt).set()  # filings counted again (accounts.recount_watch)
    return (await list_years(rt, who, since=year, until=year))[0]


async def list_years(rt: Runtime, who: Principal, since: int | None = None,
                     until: int | None = None) -> list[CalendarYearPublic]:
    """Each year from `since` (default: last year) to the last one a deadline may reach, and
    every year ops loaded, with where it comes from. Every signed-in person reads it (the
transports refuse matrix clients)."""
    async with rt.db.session() as s:
        cal = await calendar_book.refresh(s)
        notices = {y.year: y for y in await calendar_book.years(s)}
    first = since if since is not None else workdays.local_date(utcnow()).year - 1
    last = min(until if until is not None else cal.last_year, cal.last_year)
    if first < 2004 or first > last:
        raise invalid("validation_failed", f"年份须在 2004 至 {cal.last_year} 之间", [{"field": "from"}])
    years = sorted(set(range(first, last + 1)) | {y for y in notices if first <= y <= last})
    return [_view(cal, y, notices.get(y)) for y in years]


async def year_history(rt: Runtime, who: Principal, year: int) -> list[CalendarYearVersionPublic]:
    """Every load of `year`, oldest first (who, when, which notice)."""
    async with rt.db.session() as s:
        rows = (await s.exec(select(CalendarYearVersion).where(CalendarYearVersion.year == year)
                             .order_by(CalendarYearVersion.version))).all()
    if not rows:
        raise not_found("calendar_year", str(year))
    return [CalendarYearVersionPublic(year=r.year, version=r.version, revision=r.revision,
                                      holidays=r.holidays, workdays=r.workdays,
                                      notice=NoticeIn(number=r.notice_number, published_on=r.notice_published_on),
                                      loaded_by=r.loaded_by, loaded_at=r.loaded_at) for r in rows]


def _notice_year(v: CalendarYearVersion) -> NoticeYear:
    return NoticeYear(v.year, v.revision, v.version, tuple(map(date.fromisoformat, v.holidays)),
                      tuple(map(date.fromisoformat, v.workdays)), v.notice_number, v.notice_published_on,
                      v.loaded_by, v.loaded_at)


def _view(cal: workdays.WorkCalendar, year: int, notice: NoticeYear | None) -> CalendarYearPublic:
    source = cal.source(year)
    table = cal.year_table(year)
    out = CalendarYearPublic(
        year=year, source=source, calendar=workdays.PROVISIONAL if source == workdays.PROVISIONAL else workdays.OFFICIAL,
        holidays=sorted(table.holidays), workdays=sorted(table.workdays))
    if source == workdays.NOTICE and notice is not None:
        out.version, out.revision, out.loaded_by, out.loaded_at = (notice.version, notice.revision, notice.loaded_by,
                                                                   notice.loaded_at)
        out.notice = NoticeIn(number=notice.notice_number, published_on=notice.notice_published_on)
    elif source == workdays.PROVISIONAL:
        law = holiday_law.law_in_force(year)
        out.law = f"{law.title}{law.article}"
    return out

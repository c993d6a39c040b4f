"""The official working-day calendar (法定节假日与调休) for SLA timers, in Asia/Shanghai.

Source of truth, per year:
1. the admin file named by `GOVMEDIA_CALENDAR_FILE`, for the years it lists (so operations
   can add next year's State Council notice, or correct one, without a release);
2. otherwise `chinese_calendar` (2004–2026 in chinesecalendar 1.11);
3. otherwise `CalendarNotCovered` — a deadline is never computed on a guessed calendar.

Admin file format (JSON, one key per covered year, ISO dates):

    {"2027": {"holidays": ["2027-01-01", "2027-02-05", ...],
              "workdays": ["2027-02-14", ...]}}

`holidays` are the days off of the notice (weekdays included in a holiday break; listing
weekend days too is harmless); `workdays` are the make-up working days (调休上班), usually
weekend days. Every other Monday–Friday is a working day, every other Saturday/Sunday a
rest day. A listed year is taken as complete. The file is re-read when it changes.

Periods follow the Civil Code (民法典) Art. 201/203: the day of receipt is not counted;
a period whose last day is a rest day ends on the next working day; the last day ends at
24:00, which `end_of_day` gives as the next day's 00:00 local time, in UTC for storage.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import chinese_calendar

from .errors import AppError

SHANGHAI = ZoneInfo("Asia/Shanghai")
CALENDAR_FILE_ENV = "GOVMEDIA_CALENDAR_FILE"
# A run of this many rest days means the calendar is wrong, not that a holiday is long.
_MAX_REST_RUN = 31


class CalendarNotCovered(AppError):
    """No official calendar is known for the year: a deadline cannot be computed.

    An AppError (503) so that a service answers `calendar_not_covered` instead of a
    stack trace; the fix is operational (load the year into the admin file)."""

    def __init__(self, year: int):
        super().__init__(
            503, "calendar_not_covered",
            f"{year} 年的法定节假日安排尚未载入，无法计算期限；请在 {CALENDAR_FILE_ENV} 指定的文件中补充",
            {"year": year},
        )
        self.year = year


class CalendarFileInvalid(ValueError):
    """The admin calendar file cannot be used (unreadable, malformed or contradictory)."""


@dataclass(frozen=True)
class YearTable:
    holidays: frozenset[date]
    workdays: frozenset[date]

    def is_workday(self, day: date) -> bool:
        if day in self.workdays:
            return True
        if day in self.holidays:
            return False
        return day.weekday() < 5


def parse_calendar(data: object, source: str = "calendar file") -> dict[int, YearTable]:
    """Validate the admin file's content; refuse anything ambiguous rather than guess."""
    if not isinstance(data, dict):
        raise CalendarFileInvalid(f"{source}: top level must be an object keyed by year")
    years: dict[int, YearTable] = {}
    for key, entry in data.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) == 4):
            raise CalendarFileInvalid(f"{source}: year key {key!r} is not a four-digit year")
        year = int(key)
        if not isinstance(entry, dict) or set(entry) - {"holidays", "workdays"}:
            raise CalendarFileInvalid(f"{source}: {key} must be an object with 'holidays' and 'workdays' only")
        lists = {}
        for name in ("holidays", "workdays"):
            raw = entry.get(name, [])
            if not isinstance(raw, list):
                raise CalendarFileInvalid(f"{source}: {key}.{name} must be a list of ISO dates")
            days = set()
            for item in raw:
                try:
                    day = date.fromisoformat(item)
                except (TypeError, ValueError):
                    raise CalendarFileInvalid(f"{source}: {key}.{name}: {item!r} is not an ISO date")
                if day.year != year:
                    raise CalendarFileInvalid(f"{source}: {key}.{name}: {item} is not in {year}")
                days.add(day)
            lists[name] = frozenset(days)
        both = lists["holidays"] & lists["workdays"]
        if both:
            raise CalendarFileInvalid(f"{source}: {key}: {sorted(both)[0]} is both a holiday and a workday")
        years[year] = YearTable(lists["holidays"], lists["workdays"])
    return years


def load_calendar_file(path: str | Path) -> dict[int, YearTable]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CalendarFileInvalid(f"cannot read calendar file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CalendarFileInvalid(f"calendar file {path} is not JSON: {exc}") from exc
    return parse_calendar(data, str(path))


class WorkCalendar:
    """Working days from the admin years first, then chinese_calendar."""

    def __init__(self, extra_years: dict[int, YearTable] | None = None):
        self.extra_years = dict(extra_years or {})

    def is_workday(self, day: date) -> bool:
        day = _as_date(day)
        table = self.extra_years.get(day.year)
        if table is not None:
            return table.is_workday(day)
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            raise CalendarNotCovered(day.year) from None

    def next_workday(self, day: date) -> date:
        """The first working day strictly after `day`."""
        start = day
        for _ in range(_MAX_REST_RUN):
            day += timedelta(days=1)
            if self.is_workday(day):
                return day
        raise CalendarFileInvalid(f"no working day in the {_MAX_REST_RUN} days after {start}")

    def previous_workday(self, day: date) -> date:
        """The last working day strictly before `day`."""
        start = day
        for _ in range(_MAX_REST_RUN):
            day -= timedelta(days=1)
            if self.is_workday(day):
                return day
        raise CalendarFileInvalid(f"no working day in the {_MAX_REST_RUN} days before {start}")

    def add_workdays(self, start: date, n: int) -> date:
        """The n-th working day after `start` (the day of receipt is not counted)."""
        start = _as_date(start)
        if n < 0:
            raise ValueError("n must be zero or more")
        day = start
        for _ in range(n):
            day = self.next_workday(day)
        return day

    def calendar_days_deadline(self, start: date, n: int) -> date:
        """Last day of an n-calendar-day period from `start`, moved off a rest day."""
        start = _as_date(start)
        if n < 0:
            raise ValueError("n must be zero or more")
        last = start + timedelta(days=n)
        return last if self.is_workday(last) else self.next_workday(last)

    def count_workdays(self, first: date, stop: date) -> int:
        """How many working days lie in [first, stop) (0 when stop <= first)."""
        first, stop = _as_date(first), _as_date(stop)
        return sum(1 for k in range(max((stop - first).days, 0)) if self.is_workday(first + timedelta(days=k)))

    def covers(self, year: int) -> bool:
        """Whether the whole year is known (admin file or library)."""
        try:
            self.is_workday(date(year, 1, 1))
            self.is_workday(date(year, 12, 31))
        except CalendarNotCovered:
            return False
        return True

    def covered_through(self, today: date) -> date | None:
        """The last day up to which every day from `today` on is known (None if today is
        not): deadlines falling after it will be refused until the next year is loaded."""
        today = _as_date(today)
        year = today.year
        while self.covers(year):
            year += 1
        return date(year - 1, 12, 31) if year > today.year else None

    def year_table(self, year: int) -> YearTable:
        """The year as this calendar sees it (holidays = weekday rest days, workdays = weekend
        working days), e.g. to derive a changed calendar; CalendarNotCovered if unknown."""
        if year in self.extra_years:
            return self.extra_years[year]
        day, holidays, working = date(year, 1, 1), set(), set()
        while day.year == year:
            if self.is_workday(day) != (day.weekday() < 5):
                (working if day.weekday() >= 5 else holidays).add(day)
            day += timedelta(days=1)
        return YearTable(frozenset(holidays), frozenset(working))


# --- the process-wide calendar (admin file from the environment) ---------------------

_lock = threading.Lock()
_cached: tuple[tuple[str, int], WorkCalendar] | None = None


def default_calendar() -> WorkCalendar:
    """The calendar of this process; re-reads the admin file when its path or mtime changes."""
    global _cached
    path = os.environ.get(CALENDAR_FILE_ENV, "").strip()
    stamp = (path, os.stat(path).st_mtime_ns if path and os.path.exists(path) else -1)
    if path and stamp[1] == -1:
        raise CalendarFileInvalid(f"{CALENDAR_FILE_ENV}={path}: file not found")
    with _lock:
        if _cached is None or _cached[0] != stamp:
            _cached = (stamp, WorkCalendar(load_calendar_file(path) if path else None))
        return _cached[1]


def is_workday(day: date) -> bool:
    return default_calendar().is_workday(day)


def add_workdays(start_date: date, n: int) -> date:
    """Civil Code Art. 201: counting starts the day after `start_date`; returns the n-th working day."""
    return default_calendar().add_workdays(start_date, n)


def calendar_days_deadline(start: date, n: int) -> date:
    """Civil Code Art. 201/203: start + n days, or the next working day when that is a rest day."""
    return default_calendar().calendar_days_deadline(start, n)


def previous_workday(day: date) -> date:
    return default_calendar().previous_workday(day)


def covered_days(today: date) -> int:
    """Days after `today` that the calendar of this process still covers (-1: not even today).
    For the `govmedia_calendar_covered_days` gauge: alert well before it reaches the length
    of the longest SLA period."""
    through = default_calendar().covered_through(today)
    return -1 if through is None else (through - _as_date(today)).days


def end_of_day(day: date) -> datetime:
    """24:00 Asia/Shanghai of `day` (= next day 00:00 local), as an aware UTC datetime."""
    day = _as_date(day)
    return datetime.combine(day + timedelta(days=1), time(0), SHANGHAI).astimezone(timezone.utc)


def start_of_day(day: date) -> datetime:
    """00:00 Asia/Shanghai of `day`, as an aware UTC datetime."""
    return datetime.combine(_as_date(day), time(0), SHANGHAI).astimezone(timezone.utc)


def local_date(moment: datetime) -> date:
    """The Asia/Shanghai calendar date of an aware moment (e.g. the day of receipt)."""
    if moment.tzinfo is None:
        raise ValueError("an aware datetime is needed")
    return moment.astimezone(SHANGHAI).date()


def _as_date(value: date) -> date:
    # A datetime is a date too; silently dropping its time zone would shift days.
    if isinstance(value, datetime):
        raise TypeError("pass a date (use local_date() for a datetime)")
    if not isinstance(value, date):
        raise TypeError(f"a date is needed, not {type(value).__name__}")
    return value


__all__ = [
    "CALENDAR_FILE_ENV", "CalendarFileInvalid", "CalendarNotCovered", "SHANGHAI", "WorkCalendar", "YearTable",
    "add_workdays", "calendar_days_deadline", "default_calendar", "end_of_day", "is_workday", "load_calendar_file",
    "local_date", "parse_calendar", "previous_workday", "start_of_day",
]

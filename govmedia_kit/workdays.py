"""The working-day calendar (法定节假日与调休) for every deadline counted in working days, in
Asia/Shanghai.

Where a year comes from, first found wins (`WorkCalendar.source`):
1. `notice`: the State Council's notice as ops loaded it (`PUT /v1/calendar/years/{year}` on the
   account service; every other service keeps the same years from the bus, `calendar_book.py`);
2. `file`: the seed file named by `GOVMEDIA_CALENDAR_FILE`, for the years it lists;
3. `library`: `chinese_calendar` (2004–2026 in chinesecalendar 1.11);
4. `provisional`: for a year none of those know, up to `PROVISIONAL_YEARS_AHEAD` years after this
   one: weekends plus the statutory holidays of the holiday law in force (`holiday_law.py`). Its
   make-up working days (调休) and in-lieu days are unknown until the notice, and not invented;
   a deadline counted on such a year is marked `provisional` and recomputed once the year is
   official;
5. otherwise `CalendarNotCovered`: no deadline is computed on a calendar nobody knows.

Sources 1–3 are `official`. File format (JSON, one key per covered year, ISO dates):

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

from . import holiday_law
from .errors import AppError

SHANGHAI = ZoneInfo("Asia/Shanghai")
CALENDAR_FILE_ENV = "GOVMEDIA_CALENDAR_FILE"
# A run of this many rest days means the calendar is wrong, not that a holiday is long.
_MAX_REST_RUN = 31
# How far past the current year a provisional year is computed: every deadline of the platform
# (60 + 30 days at most) fits; a date further out is a typing error, refused.
PROVISIONAL_YEARS_AHEAD = 2
NOTICE, FILE, LIBRARY, PROVISIONAL = "notice", "file", "library", "provisional"
OFFICIAL = "official"


class CalendarNotCovered(AppError):
    """A date no source of the calendar knows (before the library's first year, or more than
    `PROVISIONAL_YEARS_AHEAD` years ahead): a deadline cannot be computed. 422: what was asked
    is out of range; every year a real deadline reaches is covered, provisionally at worst."""

    def __init__(self, year: int, last_year: int | None = None):
        last = f"，目前可计算至 {last_year} 年" if last_year else ""
        super().__init__(
            422, "calendar_not_covered",
            f"{year} 年超出工作日历的范围{last}（日期是否有误？）",
            {"year": year, **({"last_year": last_year} if last_year else {})},
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
    """Working days of a year from its first source: ops' notices, the seed file, the library,
    the holiday law (provisional). `today` fixes the provisional horizon (default: now)."""

    def __init__(self, extra_years: dict[int, YearTable] | None = None,
                 notice_years: dict[int, YearTable] | None = None, today: date | None = None, revision: int = 0):
        self.extra_years = dict(extra_years or {})    # the seed file's
        self.notice_years = dict(notice_years or {})  # ops' notices
        self.revision = revision                      # of ops' notices (calendar_book)
        self.last_year = (today or datetime.now(SHANGHAI).date()).year + PROVISIONAL_YEARS_AHEAD
        self._provisional: dict[int, YearTable] = {}
        self._library: dict[int, bool] = {}

    def source(self, year: int) -> str:
        """Where `year` comes from (NOTICE, FILE, LIBRARY or PROVISIONAL); CalendarNotCovered if
        from nowhere."""
        if year in self.notice_years:
            return NOTICE
        if year in self.extra_years:
            return FILE
        if self._library_knows(year):
            return LIBRARY
        if holiday_law.LAW_VERSIONS[-1].in_force_from.year <= year <= self.last_year:
            return PROVISIONAL
        raise CalendarNotCovered(year, self.last_year)

    def basis(self, first: date, last: date) -> str:
        """OFFICIAL when every year from `first` to `last` is official, else PROVISIONAL: what a
        deadline counted over those days rests on."""
        years = range(_as_date(first).year, _as_date(last).year + 1)
        return PROVISIONAL if any(self.source(y) == PROVISIONAL for y in years) else OFFICIAL

    def first_provisional_year(self) -> int | None:
        """The earliest year (from this one on) that is provisional now, if any."""
        for year in range(self.last_year - PROVISIONAL_YEARS_AHEAD, self.last_year + 1):
            if self.source(year) == PROVISIONAL:
                return year
        return None

    def is_workday(self, day: date) -> bool:
        day = _as_date(day)
        table = self.notice_years.get(day.year) or self.extra_years.get(day.year)
        if table is not None:
            return table.is_workday(day)
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError:
            pass
        return self._provisional_year(day.year).is_workday(day)

    def _library_knows(self, year: int) -> bool:
        known = self._library.get(year)
        if known is None:
            try:
                chinese_calendar.is_workday(date(year, 1, 1))
                chinese_calendar.is_workday(date(year, 12, 31))
                known = True
            except NotImplementedError:
                known = False
            self._library[year] = known
        return known

    def _provisional_year(self, year: int) -> YearTable:
        table = self._provisional.get(year)
        if table is None:
            if self.source(year) != PROVISIONAL:  # raises beyond the horizon
                raise AssertionError(f"{year} is not provisional")
            # The law's days off that fall on weekdays; its in-lieu days and 调休 are unknown.
            table = YearTable(frozenset(d for d in holiday_law.statutory_holidays(year) if d.weekday() < 5),
                              frozenset())
            self._provisional[year] = table
        return table

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
        """Whether the year is known officially (notice, file or library)."""
        try:
            return self.source(year) != PROVISIONAL
        except CalendarNotCovered:
            return False

    def covered_through(self, today: date) -> date | None:
        """The last day up to which every day from `today` on is known officially (None if today
        is not): deadlines falling after it are provisional until the next notice is loaded."""
        today = _as_date(today)
        year = today.year
        while self.covers(year):
            year += 1
        return date(year - 1, 12, 31) if year > today.year else None

    def year_table(self, year: int) -> YearTable:
        """The year as this calendar sees it (holidays = weekday rest days, workdays = weekend
        working days), e.g. to derive a changed calendar; CalendarNotCovered if unknown."""
        if year in self.notice_years:
            return self.notice_years[year]
        if year in self.extra_years:
            return self.extra_years[year]
        if self.source(year) == PROVISIONAL:
            return self._provisional_year(year)
        day, holidays, working = date(year, 1, 1), set(), set()
        while day.year == year:
            if self.is_workday(day) != (day.weekday() < 5):
                (working if day.weekday() >= 5 else holidays).add(day)
            day += timedelta(days=1)
        return YearTable(frozenset(holidays), frozenset(working))


# --- the process-wide calendar ---------------------------------------------------------

_lock = threading.Lock()
_cached: tuple[tuple, WorkCalendar] | None = None
# Ops' notices as this process last read them from its database (calendar_book.CalendarBook).
_notices: tuple[int, dict[int, YearTable]] = (0, {})


def install_notices(revision: int, years: dict[int, YearTable]) -> None:
    """Make ops' notices (as of `revision`, the calendar's change counter) this process's."""
    global _notices
    with _lock:
        if revision >= _notices[0]:
            _notices = (revision, dict(years))


def notices_revision() -> int:
    """The revision of ops' notices this process computes with (0: none loaded)."""
    return _notices[0]


def default_calendar() -> WorkCalendar:
    """The calendar of this process: rebuilt when ops' notices change, the seed file's path or
    mtime changes, or the day changes (the provisional horizon moves with the year)."""
    global _cached
    path = os.environ.get(CALENDAR_FILE_ENV, "").strip()
    mtime = os.stat(path).st_mtime_ns if path and os.path.exists(path) else -1
    if path and mtime == -1:
        raise CalendarFileInvalid(f"{CALENDAR_FILE_ENV}={path}: file not found")
    today = datetime.now(SHANGHAI).date()
    with _lock:
        revision, notices = _notices
        stamp = (path, mtime, revision, today.year)
        if _cached is None or _cached[0] != stamp:
            _cached = (stamp, WorkCalendar(load_calendar_file(path) if path else None, notices, today, revision))
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
    """Days after `today` that the calendar of this process covers officially (-1: not even
    today). For the `govmedia_calendar_covered_days` gauge: deadlines beyond it are provisional."""
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
    "CALENDAR_FILE_ENV", "FILE", "LIBRARY", "NOTICE", "OFFICIAL", "PROVISIONAL", "PROVISIONAL_YEARS_AHEAD", "SHANGHAI",
    "CalendarFileInvalid", "CalendarNotCovered", "WorkCalendar", "YearTable", "add_workdays",
    "calendar_days_deadline", "default_calendar", "end_of_day", "install_notices", "is_workday",
    "load_calendar_file", "local_date", "notices_revision", "parse_calendar", "previous_workday", "start_of_day",
]

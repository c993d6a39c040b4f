"""SLA deadline arithmetic of petitions: pure functions over the official working-day calendar.

Counting (民法典 Art. 201, 203; issue 6):
- the day the clock starts (receipt, acceptance, an answer …) is not counted: counting starts
  the next day, in Asia/Shanghai;
- a period ends at 24:00 Asia/Shanghai of its last day (stored as the next day's 00:00, UTC);
- a working-day period counts only working days of the official calendar, make-up working
  days (调休上班) included; its last day is therefore always a working day;
- a calendar-day period whose last day is not a working day ends on the next working day;
- a year without an official source is counted provisionally (the holiday law's days off, see
  `govmedia_kit/workdays.py`); one beyond every source raises `CalendarNotCovered`.

Pauses (waiting for the citizen, 补充材料): a pause from day `a` to the day `b` it ends gives
back the days of [a, b) — the day of pausing is not charged to the unit, the day work resumes
is — counted in the period's own unit (working days for a working-day period, calendar days for
a calendar-day one). Days before counting starts are not given back. A pause that starts before
the last day therefore moves the deadline by exactly the paused working days; a pause that
starts after the deadline gives nothing back (an overdue case stays overdue).

Warning: at `warn_share` (default 80 %) of the period's active time, each counted day being
24 hours long: 15 working days warn at 24:00 of the 12th; 2 working days at 14:24 of the 2nd.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Iterable

from govmedia_kit import workdays
from govmedia_kit.workdays import WorkCalendar

WORKDAYS = "workdays"
CALENDAR_DAYS = "calendar_days"
UNITS = (WORKDAYS, CALENDAR_DAYS)
DEFAULT_WARN_SHARE = 0.8
_DAY_S = 86_400
# No period of this service is near this long; a longer walk means bad input.
_MAX_WALK_DAYS = 3_660
_ONE_DAY = timedelta(days=1)


@dataclass(frozen=True)
class Period:
    days: int
    unit: str  # WORKDAYS | CALENDAR_DAYS

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown period unit {self.unit!r}")
        if not 0 <= self.days <= 366:
            raise ValueError("a period is 0 to 366 days")

    @property
    def label(self) -> str:
        return f"{self.days}{'wd' if self.unit == WORKDAYS else 'd'}"


@dataclass(frozen=True)
class Pause:
    start: datetime             # aware
    end: datetime | None = None  # None: still paused

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("pauses need aware datetimes")
        if self.end is not None and self.end < self.start:
            raise ValueError("a pause cannot end before it starts")


@dataclass(frozen=True)
class Deadline:
    started_at: datetime
    period: Period
    last_day: date          # the last day of the period (always a working day)
    due_at: datetime        # 24:00 Asia/Shanghai of last_day, aware UTC
    warn_at: datetime       # aware UTC, started_at <= warn_at <= due_at
    paused_days: int = 0    # days given back by pauses, in the period's unit
    skipped: tuple[tuple[date, date], ...] = field(default=(), repr=False)

    def time_left(self, now: datetime) -> timedelta:
        return self.due_at - now

    def overdue(self, now: datetime) -> bool:
        return now >= self.due_at


class _Memo(WorkCalendar):
    """The same calendar, answers remembered per day (chinese_calendar validates every date
    against its whole table, ~60 µs a call). Uncovered years are not remembered: they raise."""

    def __init__(self, cal: WorkCalendar):
        super().__init__(cal.extra_years, cal.notice_years, revision=cal.revision)
        self.last_year = cal.last_year
        self._base = cal
        self._days: dict[date, bool] = {}

    def is_workday(self, day: date) -> bool:
        known = self._days.get(day)
        if known is None:
            known = self._days[day] = self._base.is_workday(day)
        return known


_memos: "weakref.WeakKeyDictionary[WorkCalendar, _Memo]" = weakref.WeakKeyDictionary()


def memo(cal: WorkCalendar) -> WorkCalendar:
    """A remembering view of `cal` (one per calendar object: a changed admin file makes a new one)."""
    if isinstance(cal, _Memo):
        return cal
    found = _memos.get(cal)
    if found is None:
        found = _memos[cal] = _Memo(cal)
    return found


def paused_intervals(pauses: Iterable[Pause], counting_from: date, now: datetime | None = None
                     ) -> tuple[tuple[date, date], ...]:
    """The day ranges [a, b) given back by `pauses`, merged, clipped to `counting_from` onwards.
    An open pause runs until `now` (its days so far); without `now` it is an error."""
    spans = []
    for p in pauses:
        end = p.end if p.end is not None else now
        if end is None:
            raise ValueError("an open pause needs `now`")
        a, b = max(workdays.local_date(p.start), counting_from), workdays.local_date(end)
        if b > a:
            spans.append((a, b))
    spans.sort()
    merged: list[list[date]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


def compute(cal: WorkCalendar, started_at: datetime, period: Period, *, pauses: Iterable[Pause] = (),
            extra_days: int = 0, warn_share: float = DEFAULT_WARN_SHARE, now: datetime | None = None) -> Deadline:
    """The deadline of `period` (plus `extra_days` of an extension, same unit) started at
    `started_at`, with `pauses` given back. Raises CalendarNotCovered for unknown years."""
    if started_at.tzinfo is None:
        raise ValueError("started_at must be aware")
    if not 0 < warn_share <= 1:
        raise ValueError("warn_share must be in (0, 1]")
    if extra_days < 0:
        raise ValueError("extra_days must be zero or more")
    cal = memo(cal)
    start_day = workdays.local_date(started_at)
    skipped = paused_intervals(pauses, start_day + timedelta(days=1), now)
    n = period.days + extra_days

    skip_days = {a + timedelta(days=k) for a, b in skipped for k in range((b - a).days)}
    workday = cal.is_workday if period.unit == WORKDAYS else None
    active: list[date] = []
    day = start_day
    walked = 0
    while len(active) < n:
        day += _ONE_DAY
        walked += 1
        if walked > _MAX_WALK_DAYS:
            raise ValueError("period too long")
        if skip_days and day in skip_days:
            continue
        if workday is None or workday(day):
            active.append(day)
    nominal = active[-1] if active else start_day
    if period.unit == WORKDAYS and n > 0:
        last = nominal
    else:
        last = nominal if cal.is_workday(nominal) else cal.next_workday(nominal)
    due_at = workdays.end_of_day(last)

    warn_s = round(warn_share * n * _DAY_S)
    whole, rest = divmod(warn_s, _DAY_S)
    if rest == 0:
        warn_at = workdays.end_of_day(active[whole - 1]) if whole else started_at
    else:
        warn_at = workdays.start_of_day(active[whole]) + timedelta(seconds=rest)
    warn_at = min(max(warn_at, started_at), due_at)

    if period.unit == WORKDAYS:
        paused = sum(cal.count_workdays(a, min(b, last + timedelta(days=1))) for a, b in skipped)
    else:
        paused = sum((min(b, last + timedelta(days=1)) - a).days for a, b in skipped if a <= last)
    return Deadline(started_at, period, last, due_at, warn_at, max(paused, 0), skipped)


def add_period(cal: WorkCalendar, start_day: date, period: Period) -> date:
    """The last day of `period` counted from the day after `start_day` (no pauses): for windows
    such as "复查 within 30 days of the answer" or "return within 5 working days"."""
    cal = memo(cal)
    if period.unit == WORKDAYS:
        return cal.add_workdays(start_day, period.days)
    return cal.calendar_days_deadline(start_day, period.days)


def window_open(cal: WorkCalendar, opened_at: datetime, period: Period, now: datetime) -> bool:
    """Whether `now` is still within `period` counted from `opened_at` (ends 24:00 of its last day)."""
    return now < workdays.end_of_day(add_period(cal, workdays.local_date(opened_at), period))


def working_days_between(cal: WorkCalendar, start: datetime, end: datetime) -> int:
    """Working days elapsed from `start` to `end` (Civil Code counting: the start day is not
    counted, the end day is when it is a working day): the handling time of a case."""
    a, b = workdays.local_date(start), workdays.local_date(end)
    if b <= a:
        return 0
    return memo(cal).count_workdays(a + timedelta(days=1), b + timedelta(days=1))


def next_working_morning(cal: WorkCalendar, moment: datetime) -> datetime:
    """00:00 Asia/Shanghai of the first working day after `moment`'s day (a 催办's due instant)."""
    return workdays.start_of_day(cal.next_workday(workdays.local_date(moment)))


__all__ = [
    "CALENDAR_DAYS", "DEFAULT_WARN_SHARE", "Deadline", "Pause", "Period", "UNITS", "WORKDAYS", "add_period", "compute",
    "next_working_morning", "paused_intervals", "window_open", "working_days_between",
]

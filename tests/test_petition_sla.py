"""SLA deadline arithmetic of petitions (services/petition/sla.py): pure, no processes.

Holiday data below is chinesecalendar 1.11's (State Council notices for 2025 and 2026):
2025 Spring Festival 01-28..02-04 off, make-up Sun 01-26 and Sat 02-08; 2025 National Day
10-01..10-08 off, make-up Sun 09-28 and Sat 10-11; 2026 Spring Festival 02-15..02-23 off,
make-up Sat 02-14 and Sat 02-28; 2026 National Day 10-01..10-07 off, make-up Sun 09-20 and
Sat 10-10."""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from govmedia_kit import workdays
from govmedia_kit.workdays import SHANGHAI, CalendarNotCovered, WorkCalendar, YearTable, parse_calendar
from services.petition import sla
from services.petition.sla import CALENDAR_DAYS, WORKDAYS, Pause, Period

D = date
CAL = WorkCalendar()
PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def no_admin_file(monkeypatch):
    monkeypatch.delenv(workdays.CALENDAR_FILE_ENV, raising=False)


def at(day: date, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), SHANGHAI)


def local(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).isoformat()


# --- fixed examples across the holidays ------------------------------------------------

def test_2026_spring_festival_with_its_make_up_saturdays():
    # Consultation (2 working days) received Friday before the break: the make-up Saturday
    # 02-14 is the first working day, the second is the first day after the break.
    d = sla.compute(CAL, at(D(2026, 2, 13), 16), Period(2, WORKDAYS))
    assert d.last_day == D(2026, 2, 24) and local(d.due_at) == "2026-02-25T00:00:00+08:00"
    # 80 % of 2 working days = 1.6: 14:24 on the second working day.
    assert local(d.warn_at) == "2026-02-24T14:24:00+08:00"
    # Received during the break: counting starts after it; the make-up Saturday 02-28 counts.
    d = sla.compute(CAL, at(D(2026, 2, 18)), Period(5, WORKDAYS))
    assert d.last_day == D(2026, 2, 28)
    # A 15-calendar-day period ending on the make-up Saturday ends there (it is a working day).
    assert sla.compute(CAL, at(D(2026, 2, 13)), Period(15, CALENDAR_DAYS)).last_day == D(2026, 2, 28)
    # … and one ending inside the break moves to the first working day after it.
    d = sla.compute(CAL, at(D(2026, 2, 1)), Period(15, CALENDAR_DAYS))
    assert d.last_day == D(2026, 2, 24) and local(d.due_at) == "2026-02-25T00:00:00+08:00"
    # The warning of a calendar-day period is 80 % of its own days (12 of 15), before the move.
    assert local(d.warn_at) == "2026-02-14T00:00:00+08:00"


def test_2025_spring_festival_help_request():
    # Help request (10 working days) received Friday 01-24: Sun 01-26 (make-up) is day 1,
    # Mon 01-27 day 2, the break 01-28..02-04, then 02-05..02-07, Sat 02-08 (make-up), 02-10..02-13.
    d = sla.compute(CAL, at(D(2025, 1, 24)), Period(10, WORKDAYS))
    assert d.last_day == D(2025, 2, 13)
    assert local(d.warn_at) == "2025-02-12T00:00:00+08:00"  # 24:00 of the 8th working day (02-11)


def test_2025_national_day_complaint_and_formal_petition():
    # Complaint (15 working days) received Friday 09-26: Sun 09-28 (make-up), 09-29, 09-30,
    # the break 10-01..10-08, then 10-09, 10-10, Sat 10-11 (make-up), 10-13 … 10-23.
    d = sla.compute(CAL, at(D(2025, 9, 26)), Period(15, WORKDAYS))
    assert d.last_day == D(2025, 10, 23) and local(d.due_at) == "2025-10-24T00:00:00+08:00"
    assert local(d.warn_at) == "2025-10-21T00:00:00+08:00"  # 24:00 of the 12th working day (10-20)
    # Formal petition, acceptance within 15 (calendar) days, received 09-20: day 15 is 10-05,
    # a holiday, so the period ends on the first working day after the break, 10-09.
    d = sla.compute(CAL, at(D(2025, 9, 20)), Period(15, CALENDAR_DAYS))
    assert d.last_day == D(2025, 10, 9) and local(d.due_at) == "2025-10-10T00:00:00+08:00"


def test_2026_national_day_handling_and_pause():
    # Complaint received Wed 09-30 2026: the break 10-01..10-07, 10-08, 10-09, Sat 10-10 (make-up) …
    d = sla.compute(CAL, at(D(2026, 9, 30)), Period(3, WORKDAYS))
    assert d.last_day == D(2026, 10, 10)
    # Waiting for the citizen from Thu 10-08 to Mon 10-12 gives back 10-08, 10-09 and 10-10.
    paused = sla.compute(CAL, at(D(2026, 9, 30)), Period(3, WORKDAYS),
                         pauses=[Pause(at(D(2026, 10, 8), 9), at(D(2026, 10, 12), 15))])
    assert paused.paused_days == 3 and paused.last_day == D(2026, 10, 14)
    # Formal petition handling: 60 days from acceptance on 2026-08-03, plus a 30-day extension.
    d = sla.compute(CAL, at(D(2026, 8, 3)), Period(60, CALENDAR_DAYS))
    assert d.last_day == D(2026, 10, 8)  # day 60 is 10-02, in the break
    assert sla.compute(CAL, at(D(2026, 8, 3)), Period(60, CALENDAR_DAYS), extra_days=30).last_day == D(2026, 11, 2)


def test_receipt_day_and_time_zone():
    # 00:30 on 03-03 in Shanghai is still 03-02 in UTC: the day of receipt is the local one.
    received = datetime(2026, 3, 2, 16, 30, tzinfo=timezone.utc)
    assert sla.compute(CAL, received, Period(1, WORKDAYS)).last_day == D(2026, 3, 4)
    late = datetime(2026, 3, 2, 15, 59, tzinfo=timezone.utc)  # 23:59 on 03-02 local
    assert sla.compute(CAL, late, Period(1, WORKDAYS)).last_day == D(2026, 3, 3)


def test_open_pause_counts_until_now_and_same_day_pause_gives_nothing():
    start = at(D(2026, 3, 2))  # Monday
    base = sla.compute(CAL, start, Period(5, WORKDAYS))
    assert base.last_day == D(2026, 3, 9)
    same_day = sla.compute(CAL, start, Period(5, WORKDAYS), pauses=[Pause(at(D(2026, 3, 4), 9), at(D(2026, 3, 4), 17))])
    assert same_day.last_day == base.last_day and same_day.paused_days == 0
    open_pause = sla.compute(CAL, start, Period(5, WORKDAYS), pauses=[Pause(at(D(2026, 3, 4)))],
                             now=at(D(2026, 3, 6)))
    assert open_pause.paused_days == 2 and open_pause.last_day == D(2026, 3, 11)
    with pytest.raises(ValueError):
        sla.compute(CAL, start, Period(5, WORKDAYS), pauses=[Pause(at(D(2026, 3, 4)))])
    # A pause that starts after the deadline gives nothing back: overdue stays overdue.
    late = sla.compute(CAL, start, Period(5, WORKDAYS), pauses=[Pause(at(D(2026, 3, 10)), at(D(2026, 3, 20)))])
    assert late.last_day == base.last_day and late.paused_days == 0


def test_warn_share_is_configurable():
    d = sla.compute(CAL, at(D(2026, 3, 2)), Period(10, WORKDAYS), warn_share=0.5)
    assert local(d.warn_at) == "2026-03-10T00:00:00+08:00"  # 24:00 of the 5th working day (Mon 03-09)
    d = sla.compute(CAL, at(D(2026, 3, 2)), Period(10, WORKDAYS), warn_share=1.0)
    assert d.warn_at == d.due_at
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            sla.compute(CAL, at(D(2026, 3, 2)), Period(10, WORKDAYS), warn_share=bad)


def test_a_period_into_a_year_without_a_notice_is_counted_provisionally():
    cal = WorkCalendar(today=D(2026, 12, 5))
    # Fri 25 Dec 2026 + 15 working days: 元旦 (Fri 1 Jan 2027) off by the law → Mon 18 Jan.
    d = sla.compute(cal, at(D(2026, 12, 25)), Period(15, WORKDAYS))
    assert d.last_day == D(2027, 1, 18) and cal.basis(D(2026, 12, 25), d.last_day) == "provisional"
    # The notice gives one more day off before it: the deadline moves one working day later.
    official = WorkCalendar(notice_years={2027: YearTable(frozenset({D(2027, 1, 1), D(2027, 1, 4)}), frozenset())},
                            today=D(2026, 12, 5))
    assert sla.compute(official, at(D(2026, 12, 25)), Period(15, WORKDAYS)).last_day == D(2027, 1, 19)
    # Beyond every source (more than two years ahead) it is refused, never guessed.
    with pytest.raises(CalendarNotCovered) as err:
        sla.compute(cal, at(D(2028, 12, 25)), Period(15, WORKDAYS))
    assert err.value.code == "calendar_not_covered" and err.value.year == 2029


def test_windows_and_handling_time():
    answered = at(D(2025, 9, 26))
    # 复查 may be asked within 30 days of the answer: day 30 is 10-26 (a Sunday) → Mon 10-27.
    assert sla.add_period(CAL, D(2025, 9, 26), Period(30, CALENDAR_DAYS)) == D(2025, 10, 27)
    assert sla.window_open(CAL, answered, Period(30, CALENDAR_DAYS), at(D(2025, 10, 27), 23, 59))
    assert not sla.window_open(CAL, answered, Period(30, CALENDAR_DAYS), at(D(2025, 10, 28), 0, 0))
    # A wrongly assigned unit returns the case within 5 working days (Art. 23).
    assert sla.add_period(CAL, D(2025, 9, 26), Period(5, WORKDAYS)) == D(2025, 10, 10)
    assert sla.working_days_between(CAL, at(D(2025, 9, 26)), at(D(2025, 10, 10), 18)) == 5
    assert sla.working_days_between(CAL, at(D(2025, 9, 26)), at(D(2025, 9, 26), 18)) == 0
    assert sla.next_working_morning(CAL, at(D(2025, 9, 30), 23)) == workdays.start_of_day(D(2025, 10, 9))


# --- properties ------------------------------------------------------------------------

COVERED_FROM, COVERED_TO = D(2025, 1, 1), D(2026, 8, 31)
received_days = st.dates(min_value=COVERED_FROM, max_value=COVERED_TO)
hours = st.integers(min_value=0, max_value=23)
periods = st.one_of(
    st.builds(Period, st.integers(min_value=0, max_value=20), st.just(WORKDAYS)),
    st.builds(Period, st.integers(min_value=0, max_value=60), st.just(CALENDAR_DAYS)),
)


@PROPS
@given(received_days, hours, st.integers(min_value=1, max_value=20), st.integers(min_value=0, max_value=40),
       st.integers(min_value=0, max_value=25), hours, hours)
def test_pausing_p_working_days_moves_the_deadline_by_exactly_p_working_days(
        received, hour, n, offset, length, pause_hour, resume_hour):
    start = at(received, hour)
    before = sla.compute(CAL, start, Period(n, WORKDAYS))
    paused_on = received + timedelta(days=offset)
    assume(paused_on <= before.last_day)
    resumed_on = paused_on + timedelta(days=length)
    after = sla.compute(CAL, start, Period(n, WORKDAYS),
                        pauses=[Pause(at(paused_on, pause_hour), at(resumed_on, resume_hour))] if length or
                        resume_hour >= pause_hour else [])
    p = CAL.count_workdays(max(paused_on, received + timedelta(days=1)), resumed_on)
    assert after.paused_days == p
    assert after.last_day == CAL.add_workdays(before.last_day, p)
    assert after.due_at - before.due_at >= timedelta(days=p)


@PROPS
@given(received_days, hours, periods, st.integers(min_value=1, max_value=120), st.booleans())
def test_adding_a_holiday_never_brings_a_deadline_earlier(received, hour, period, ahead, with_pause):
    extra = received + timedelta(days=ahead)
    assume(CAL.is_workday(extra))
    table = CAL.year_table(extra.year)
    assert table == YearTable(table.holidays, table.workdays)
    changed = WorkCalendar({extra.year: YearTable(table.holidays | {extra}, table.workdays - {extra})})
    assert not changed.is_workday(extra)
    start = at(received, hour)
    pauses = [Pause(at(received + timedelta(days=2)), at(received + timedelta(days=6)))] if with_pause else []
    before = sla.compute(CAL, start, period, pauses=pauses)
    after = sla.compute(changed, start, period, pauses=pauses)
    assert after.due_at >= before.due_at and after.warn_at >= before.warn_at


@PROPS
@given(received_days, hours, periods, st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=20),
       st.integers(min_value=0, max_value=30), st.floats(min_value=0.05, max_value=1.0))
def test_a_deadline_never_falls_on_a_non_working_day(received, hour, period, offset, length, extension, share):
    start = at(received, hour)
    pauses = [Pause(at(received + timedelta(days=offset)), at(received + timedelta(days=offset + length)))]
    d = sla.compute(CAL, start, period, pauses=pauses, extra_days=extension, warn_share=share)
    assert CAL.is_workday(d.last_day)
    assert d.last_day > received or period.days + extension == 0
    assert d.due_at == workdays.end_of_day(d.last_day)
    assert d.due_at.astimezone(SHANGHAI).time() == time(0)
    assert start <= d.warn_at <= d.due_at
    # An extension never shortens the period.
    assert d.due_at >= sla.compute(CAL, start, period, pauses=pauses, warn_share=share).due_at


@PROPS
@given(received_days, hours, st.integers(min_value=1, max_value=20))
def test_working_day_periods_count_exactly_n_working_days(received, hour, n):
    d = sla.compute(CAL, at(received, hour), Period(n, WORKDAYS))
    assert CAL.count_workdays(received + timedelta(days=1), d.last_day + timedelta(days=1)) == n
    assert sla.working_days_between(CAL, at(received, hour), at(d.last_day, 12)) == n


def test_year_table_round_trips_the_official_calendar():
    for year in (2025, 2026):
        table = CAL.year_table(year)
        rebuilt = WorkCalendar({year: table})
        day = D(year, 1, 1)
        while day.year == year:
            assert rebuilt.is_workday(day) == CAL.is_workday(day), day
            day += timedelta(days=1)
        assert D(year, 10, 1) in table.holidays
    assert D(2026, 2, 14) in CAL.year_table(2026).workdays

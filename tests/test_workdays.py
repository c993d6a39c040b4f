"""The official working-day calendar of the kit: pure unit tests, no processes."""
from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from govmedia_kit import workdays
from govmedia_kit.workdays import (
    CALENDAR_FILE_ENV, CalendarFileInvalid, CalendarNotCovered, WorkCalendar, YearTable, add_workdays,
    calendar_days_deadline, end_of_day, is_workday, local_date,
)

D = date


@pytest.fixture(autouse=True)
def no_admin_file(monkeypatch):
    monkeypatch.delenv(CALENDAR_FILE_ENV, raising=False)


# --- the official calendar -------------------------------------------------------------

def test_spring_festival_2026_holidays_and_make_up_days():
    assert not is_workday(D(2026, 2, 16))  # Monday in the Spring Festival break
    assert not is_workday(D(2026, 2, 23))  # last day of the break, a Monday
    assert is_workday(D(2026, 2, 14))      # Saturday worked in lieu (调休上班)
    assert is_workday(D(2026, 2, 28))      # Saturday worked in lieu
    assert not is_workday(D(2026, 3, 1))   # an ordinary Sunday


def test_receipt_day_is_not_counted():
    # Received on a working Tuesday: one working day is Wednesday, not Tuesday itself.
    assert add_workdays(D(2026, 3, 3), 1) == D(2026, 3, 4)
    assert add_workdays(D(2026, 3, 3), 0) == D(2026, 3, 3)
    # Received on Friday: the weekend does not count.
    assert add_workdays(D(2026, 3, 6), 1) == D(2026, 3, 9)


def test_working_days_across_spring_festival():
    # Friday before the break: the make-up Saturday is the first working day.
    assert add_workdays(D(2026, 2, 13), 1) == D(2026, 2, 14)
    assert add_workdays(D(2026, 2, 13), 2) == D(2026, 2, 24)
    # Received during the break: counting starts after it.
    assert add_workdays(D(2026, 2, 18), 1) == D(2026, 2, 24)
    # Guangdong 12345 consultation (2 working days) received on the last day of the break.
    assert add_workdays(D(2026, 2, 23), 2) == D(2026, 2, 25)
    # The Saturday worked in lieu after the break counts as well.
    assert add_workdays(D(2026, 2, 26), 2) == D(2026, 2, 28)
    assert add_workdays(D(2026, 2, 26), 3) == D(2026, 3, 2)


def test_working_days_across_national_day():
    assert not is_workday(D(2026, 10, 1)) and not is_workday(D(2026, 10, 7))
    assert is_workday(D(2026, 10, 10))  # Saturday worked in lieu
    assert add_workdays(D(2026, 9, 30), 1) == D(2026, 10, 8)
    assert add_workdays(D(2026, 9, 30), 3) == D(2026, 10, 10)
    assert add_workdays(D(2026, 9, 30), 4) == D(2026, 10, 12)
    # 15 working days for a complaint received on the eve of the holiday.
    assert add_workdays(D(2026, 9, 30), 15) == D(2026, 10, 27)


def test_calendar_day_period_ending_on_a_rest_day_moves_to_the_next_working_day():
    # 信访 15 days from 16 September ends on 1 October (National Day) → 8 October.
    assert calendar_days_deadline(D(2026, 9, 16), 15) == D(2026, 10, 8)
    # From 1 February: 16 February is in the Spring Festival break → 24 February.
    assert calendar_days_deadline(D(2026, 2, 1), 15) == D(2026, 2, 24)
    # Ending on a Saturday worked in lieu: that is a working day, no move.
    assert calendar_days_deadline(D(2026, 2, 13), 15) == D(2026, 2, 28)
    # Ending on an ordinary Sunday → Monday; on a working day → unchanged.
    assert calendar_days_deadline(D(2026, 3, 7), 1) == D(2026, 3, 9)
    assert calendar_days_deadline(D(2026, 3, 2), 15) == D(2026, 3, 17)


def test_end_of_day_is_24_00_shanghai_in_utc():
    due = end_of_day(D(2026, 2, 24))
    assert due == datetime(2026, 2, 24, 16, 0, tzinfo=timezone.utc)
    assert due.astimezone(workdays.SHANGHAI).isoformat() == "2026-02-25T00:00:00+08:00"
    # The day of receipt is the Shanghai date: 23:30 UTC is already the next morning there.
    assert local_date(datetime(2026, 2, 23, 23, 30, tzinfo=timezone.utc)) == D(2026, 2, 24)
    with pytest.raises(ValueError):
        local_date(datetime(2026, 2, 23, 23, 30))
    with pytest.raises(TypeError):
        add_workdays(datetime(2026, 2, 23, 23, 30, tzinfo=timezone.utc), 1)


def test_a_year_without_a_notice_is_provisional_from_the_holiday_law():
    """2027 has no official source: weekends plus the law's days off (元旦 Fri 1 Jan, 除夕 Fri 5 Feb,
    初三 Mon 8 Feb, 清明 Mon 5 Apr, 端午 Wed 9 Jun, 中秋 Wed 15 Sep, 国庆 Fri 1 Oct); no 调休 invented."""
    cal = WorkCalendar(today=D(2026, 12, 5))
    assert [cal.source(y) for y in (2026, 2027, 2028)] == ["library", "provisional", "provisional"]
    assert sorted(cal.year_table(2027).holidays) == [
        D(2027, 1, 1), D(2027, 2, 5), D(2027, 2, 8), D(2027, 4, 5), D(2027, 6, 9), D(2027, 9, 15), D(2027, 10, 1)]
    assert cal.year_table(2027).workdays == frozenset()
    assert not cal.is_workday(D(2027, 2, 8)) and cal.is_workday(D(2027, 2, 9)) and not cal.is_workday(D(2027, 2, 6))
    # Thu 31 Dec 2026 + 1 working day: 1 Jan off, the weekend → Mon 4 Jan.
    assert cal.add_workdays(D(2026, 12, 31), 1) == D(2027, 1, 4)
    assert cal.basis(D(2026, 12, 20), D(2027, 1, 12)) == "provisional"
    assert cal.basis(D(2026, 12, 1), D(2026, 12, 22)) == "official"
    assert cal.first_provisional_year() == 2027 and not cal.covers(2027)


def test_a_date_beyond_every_source_is_refused_never_guessed():
    cal = WorkCalendar(today=D(2026, 12, 5))
    with pytest.raises(CalendarNotCovered) as err:
        cal.is_workday(D(2029, 1, 4))  # more than PROVISIONAL_YEARS_AHEAD years ahead
    assert err.value.year == 2029 and err.value.code == "calendar_not_covered" and err.value.status == 422
    assert err.value.details == {"year": 2029, "last_year": 2028}
    with pytest.raises(CalendarNotCovered):
        cal.add_workdays(D(2028, 12, 20), 15)  # runs into 2029
    with pytest.raises(CalendarNotCovered):
        cal.calendar_days_deadline(D(2028, 12, 20), 15)
    with pytest.raises(CalendarNotCovered):
        cal.is_workday(D(2003, 6, 2))  # before the library and the law versions known here
    # The horizon moves with the year.
    assert WorkCalendar(today=D(2027, 1, 2)).source(2029) == "provisional"


def test_a_notice_outranks_the_seed_file_the_library_and_the_law():
    file_2027 = {2027: YearTable(frozenset({D(2027, 1, 1)}), frozenset())}
    notice_2027 = {2027: YearTable(frozenset({D(2027, 1, 1), D(2027, 2, 9)}), frozenset({D(2027, 2, 20)}))}
    cal = WorkCalendar(file_2027, notice_2027, today=D(2026, 12, 5), revision=3)
    assert cal.source(2027) == "notice" and cal.revision == 3 and cal.basis(D(2026, 12, 20), D(2027, 1, 12)) == "official"
    assert not cal.is_workday(D(2027, 2, 9)) and cal.is_workday(D(2027, 2, 20))
    assert WorkCalendar(file_2027, today=D(2026, 12, 5)).source(2027) == "file"
    assert WorkCalendar({2026: YearTable(frozenset(), frozenset())}, today=D(2026, 12, 5)).source(2026) == "file"


# --- the admin file --------------------------------------------------------------------

# Test data in the documented format (not the real 2027 schedule).
YEAR_2027 = {"2027": {"holidays": ["2027-01-01", "2027-02-08", "2027-02-09"], "workdays": ["2027-02-06"]}}


def _write(path, data) -> str:
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_admin_file_covers_a_new_year(tmp_path, monkeypatch):
    monkeypatch.setenv(CALENDAR_FILE_ENV, _write(tmp_path / "calendar.json", YEAR_2027))
    assert not is_workday(D(2027, 1, 1))     # listed holiday (a Friday)
    assert is_workday(D(2027, 1, 4))         # ordinary Monday
    assert not is_workday(D(2027, 1, 9))     # ordinary Saturday
    assert is_workday(D(2027, 2, 6))         # listed make-up Saturday
    # 31 Dec 2026 (chinese_calendar) + 1 working day: 1 Jan holiday, weekend → Monday 4 Jan (admin file).
    assert add_workdays(D(2026, 12, 31), 1) == D(2027, 1, 4)
    assert add_workdays(D(2027, 2, 5), 1) == D(2027, 2, 6)
    assert add_workdays(D(2027, 2, 5), 2) == D(2027, 2, 10)
    assert calendar_days_deadline(D(2027, 1, 24), 15) == D(2027, 2, 10)  # 8 Feb is a listed holiday
    # A year in no official source is provisional, one beyond the horizon refused.
    assert workdays.default_calendar().source(D.today().year + 2) == "provisional"
    with pytest.raises(CalendarNotCovered):
        is_workday(D(D.today().year + 3, 1, 3))
    # chinese_calendar still answers for its own years.
    assert is_workday(D(2026, 2, 14))


def test_admin_file_is_reread_when_it_changes(tmp_path, monkeypatch):
    path = tmp_path / "calendar.json"
    monkeypatch.setenv(CALENDAR_FILE_ENV, _write(path, YEAR_2027))
    assert is_workday(D(2027, 3, 1))
    _write(path, {"2027": {"holidays": ["2027-03-01"], "workdays": []}})
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 10**9,) * 2)
    assert not is_workday(D(2027, 3, 1))


@pytest.mark.parametrize("content, problem", [
    ("not json", "not JSON"),
    (json.dumps(["2027-01-01"]), "top level"),
    (json.dumps({"27": {"holidays": []}}), "four-digit year"),
    (json.dumps({"2027": {"holidays": ["2027-13-01"]}}), "not an ISO date"),
    (json.dumps({"2027": {"holidays": ["2028-01-01"]}}), "not in 2027"),
    (json.dumps({"2027": {"holidays": ["2027-01-01"], "workdays": ["2027-01-01"]}}), "both"),
    (json.dumps({"2027": {"holiday": []}}), "only"),
])
def test_bad_admin_file_is_refused(tmp_path, monkeypatch, content, problem):
    path = tmp_path / "calendar.json"
    path.write_text(content, encoding="utf-8")
    monkeypatch.setenv(CALENDAR_FILE_ENV, str(path))
    with pytest.raises(CalendarFileInvalid, match=problem):
        is_workday(D(2026, 3, 2))


def test_missing_admin_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(CALENDAR_FILE_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(CalendarFileInvalid, match="not found"):
        is_workday(D(2026, 3, 2))


# --- properties ------------------------------------------------------------------------

CAL = WorkCalendar()  # chinese_calendar only: these properties hold for every covered day
# Start days whose deadlines stay inside the years chinese_calendar covers: the longest
# chain below is 61 working days, fewer than 100 calendar days.
covered_days = st.dates(min_value=D(2004, 1, 1), max_value=D(2026, 12, 31) - timedelta(days=100))
periods = st.integers(min_value=1, max_value=30)


@settings(max_examples=300, deadline=None)
@given(covered_days, periods)
def test_add_workdays_is_a_later_working_day_with_exactly_n_working_days(start, n):
    due = CAL.add_workdays(start, n)
    assert due > start and CAL.is_workday(due)
    counted = sum(CAL.is_workday(start + timedelta(days=i)) for i in range(1, (due - start).days + 1))
    assert counted == n


@settings(max_examples=200, deadline=None)
@given(covered_days, periods, periods)
def test_add_workdays_is_monotonic_and_additive(start, n, m):
    a, b = sorted((n, m))
    assert CAL.add_workdays(start, a) <= CAL.add_workdays(start, b)
    assert CAL.add_workdays(start, n + 1) > CAL.add_workdays(start, n)
    assert CAL.add_workdays(CAL.add_workdays(start, n), m) == CAL.add_workdays(start, n + m)


@settings(max_examples=300, deadline=None)
@given(covered_days, st.integers(min_value=0, max_value=60))
def test_calendar_day_deadline_is_the_first_working_day_on_or_after_start_plus_n(start, n):
    last = CAL.calendar_days_deadline(start, n)
    assert last >= start + timedelta(days=n) and CAL.is_workday(last)
    assert all(not CAL.is_workday(start + timedelta(days=n + i)) for i in range((last - start).days - n))


@settings(max_examples=200, deadline=None)
@given(st.dates(min_value=D(2027, 1, 1), max_value=D(2027, 9, 30)), periods, st.integers(min_value=0, max_value=120))
def test_adding_a_holiday_never_brings_a_deadline_earlier(start, n, offset):
    """A calendar with one more rest day gives a deadline on or after the old one, never
    before the start, always on a working day (an admin file correcting a year can only
    give people more time)."""
    plain = WorkCalendar({2027: YearTable(frozenset(), frozenset())})
    extra_day = start + timedelta(days=offset)
    holiday = WorkCalendar({2027: YearTable(frozenset({extra_day}), frozenset())}) if extra_day.year == 2027 else plain
    before, after = plain.add_workdays(start, n), holiday.add_workdays(start, n)
    assert after >= before > start
    assert holiday.is_workday(after)


def test_coverage_runs_to_the_end_of_the_last_year_known_without_a_gap():
    library = WorkCalendar()
    assert library.covers(2026) and not library.covers(2027)  # chinesecalendar 1.11
    assert library.covered_through(D(2026, 11, 23)) == D(2026, 12, 31)
    assert library.covered_through(D(2027, 1, 2)) is None
    with_2027 = WorkCalendar({2027: YearTable(frozenset({D(2027, 1, 1)}), frozenset())})
    assert with_2027.covered_through(D(2026, 11, 23)) == D(2027, 12, 31)
    gap = WorkCalendar({2028: YearTable(frozenset(), frozenset())})  # 2027 missing: coverage stops at 2026
    assert gap.covered_through(D(2026, 11, 23)) == D(2026, 12, 31)


def test_covered_days_reads_the_admin_file(tmp_path, monkeypatch):
    assert workdays.covered_days(D(2026, 12, 1)) == 30
    assert workdays.covered_days(D(2027, 3, 1)) == -1
    path = tmp_path / "calendar.json"
    path.write_text(json.dumps({"2027": {"holidays": ["2027-01-01"], "workdays": []}}), encoding="utf-8")
    monkeypatch.setenv(CALENDAR_FILE_ENV, str(path))
    assert workdays.covered_days(D(2026, 12, 1)) == 395


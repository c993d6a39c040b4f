"""The law-derived (provisional) holidays against the State Council notices and chinese_calendar."""
from __future__ import annotations

from datetime import date, timedelta

import chinese_calendar
import pytest
from hypothesis import given, settings, strategies as st

from govmedia_kit.holiday_law import LAW_VERSIONS, law_in_force, statutory_holidays

OFFICIAL_YEARS = range(2008, 2027)  # years chinesecalendar 1.11 knows, under the 2007+ law
# A one-off rest day decreed outside the law: 2015-09-03 抗战胜利70周年纪念日, with 09-04 bridged.
DECREED_OUTSIDE_LAW = {date(2015, 9, 3), date(2015, 9, 4)}
OFFICIAL_NAMES = {"元旦": "New Year's Day", "春节": "Spring Festival", "清明节": "Tomb-sweeping Day",
                  "劳动节": "Labour Day", "端午节": "Dragon Boat Festival", "中秋节": "Mid-autumn Festival",
                  "国庆节": "National Day"}


def _days(*spans: tuple[str, str, int]) -> dict[date, str]:
    """(name, first ISO date, count) -> {date: name}."""
    return {date.fromisoformat(first) + timedelta(days=i): name for name, first, n in spans for i in range(n)}


# Statutory days by hand, checked against each notice's own dates:
# 2024 国办发明电〔2023〕7号 (2023-10-25): 春节 2/10 起, 清明 4/4, 端午 6/10, 中秋 9/17 (除夕 2/9 only "encouraged").
# 2025 国办发明电〔2024〕12号 (2024-11-12): 除夕 1/28, 清明 4/4, 端午 5/31, 中秋 10/6.
# 2026 国务院办公厅关于2026年部分节假日安排的通知 (2025-11-04): 2/15 = 腊月二十八, so 除夕 2/16;
#      清明 4/5 (周日, 4/4–6 off), 端午 6/19, 中秋 9/25.
NOTICE_STATUTORY = {
    2024: _days(("元旦", "2024-01-01", 1), ("春节", "2024-02-10", 3), ("清明节", "2024-04-04", 1),
                ("劳动节", "2024-05-01", 1), ("端午节", "2024-06-10", 1), ("中秋节", "2024-09-17", 1),
                ("国庆节", "2024-10-01", 3)),
    2025: _days(("元旦", "2025-01-01", 1), ("春节", "2025-01-28", 4), ("清明节", "2025-04-04", 1),
                ("劳动节", "2025-05-01", 2), ("端午节", "2025-05-31", 1), ("中秋节", "2025-10-06", 1),
                ("国庆节", "2025-10-01", 3)),
    2026: _days(("元旦", "2026-01-01", 1), ("春节", "2026-02-16", 4), ("清明节", "2026-04-05", 1),
                ("劳动节", "2026-05-01", 2), ("端午节", "2026-06-19", 1), ("中秋节", "2026-09-25", 1),
                ("国庆节", "2026-10-01", 3)),
}


def _md(year: int, *days: str) -> list[date]:
    return [date.fromisoformat(f"{year}-{d}") for d in days]


# Where the provisional calendar (weekends + statutory days) is wrong for the year, as cited in the README.
NOTICE_DIFFERENCES = {
    2024: {"make_up_workdays": _md(2024, "02-04", "02-18", "04-07", "04-28", "05-11", "09-14", "09-29", "10-12"),
           "bridge_days": _md(2024, "02-13", "02-14", "02-15", "02-16", "04-05", "05-02", "05-03", "09-16",
                              "10-04", "10-07")},
    2025: {"make_up_workdays": _md(2025, "01-26", "02-08", "04-27", "09-28", "10-11"),
           "bridge_days": _md(2025, "02-03", "02-04", "05-05", "06-02", "10-07", "10-08")},  # 06-02: 补假, 端午 on Sat
    2026: {"make_up_workdays": _md(2026, "01-04", "02-14", "02-28", "05-09", "09-20", "10-10"),
           "bridge_days": _md(2026, "01-02", "02-20", "02-23", "04-06", "05-04", "05-05",  # 04-06: 补假, 清明 on Sun
                              "10-05", "10-06", "10-07")},
}


def _provisional_rest(day: date) -> bool:
    return day.weekday() >= 5 or day in statutory_holidays(day.year)


def _difference(day: date) -> str | None:
    """How the provisional calendar differs from the official one on `day`, if it does."""
    provisional, official = _provisional_rest(day), chinese_calendar.is_holiday(day)
    if provisional == official:
        return None
    return "make_up_workdays" if provisional else "bridge_days"


def _official_run(day: date) -> list[date]:
    """The contiguous official rest run around a rest day, clipped to the years both sides cover."""
    lo, hi = date(OFFICIAL_YEARS[0], 1, 1), date(OFFICIAL_YEARS[-1], 12, 31)
    first = last = day
    while first > lo and chinese_calendar.is_holiday(first - timedelta(days=1)):
        first -= timedelta(days=1)
    while last < hi and chinese_calendar.is_holiday(last + timedelta(days=1)):
        last += timedelta(days=1)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _check_day(day: date) -> None:
    statutory = statutory_holidays(day.year)
    kind = _difference(day)
    if day in statutory:
        assert chinese_calendar.is_holiday(day), f"{day} {statutory[day]}: statutory but an official workday"
        name = chinese_calendar.get_holiday_detail(day)[1]
        # The library names a shared 国庆/中秋 date either way, and leaves 2012-06-23 unnamed.
        assert name is None or name in {OFFICIAL_NAMES[n] for n in statutory[day].split("、")}, (day, name)
    if kind == "make_up_workdays":
        assert day.weekday() >= 5 and day not in statutory, day
    elif kind == "bridge_days" and day not in DECREED_OUTSIDE_LAW:
        # A bridge or 补假 day always joins a statutory holiday's official rest run.
        run = _official_run(day)
        assert day.weekday() < 5 and any(d in statutory_holidays(d.year) for d in run), (day, run)


def _differences(year: int) -> dict[str, list[date]]:
    found: dict[str, list[date]] = {"make_up_workdays": [], "bridge_days": []}
    day = date(year, 1, 1)
    while day.year == year:
        if kind := _difference(day):
            found[kind].append(day)
        day += timedelta(days=1)
    return found


@pytest.mark.parametrize("year", sorted(NOTICE_STATUTORY))
def test_statutory_days_match_the_notices(year):
    assert statutory_holidays(year) == NOTICE_STATUTORY[year]


@pytest.mark.parametrize("year", OFFICIAL_YEARS)
def test_provisional_differs_only_by_make_up_and_bridge_days(year):
    day = date(year, 1, 1)
    while day.year == year:
        _check_day(day)
        day += timedelta(days=1)


@settings(max_examples=300, deadline=None)
@given(st.dates(date(OFFICIAL_YEARS[0], 1, 1), date(OFFICIAL_YEARS[-1], 12, 31)))
def test_provisional_differs_only_by_make_up_and_bridge_days_drawn(day):
    _check_day(day)


@pytest.mark.parametrize("year", sorted(NOTICE_DIFFERENCES))
def test_differences_from_the_notices_are_exactly_these(year):
    assert _differences(year) == NOTICE_DIFFERENCES[year]


def test_the_2015_commemoration_is_the_only_rest_outside_the_law():
    assert all(chinese_calendar.is_holiday(d) for d in DECREED_OUTSIDE_LAW)
    assert not any(d in statutory_holidays(2015) for d in _official_run(date(2015, 9, 3)))


@pytest.mark.parametrize("year", range(2008, 2101))
def test_every_year_has_the_laws_days_in_that_year(year):
    days, law = statutory_holidays(year), law_in_force(year)
    named = [(d, n) for d, name in days.items() for n in name.split("、")]
    assert sorted(n for _, n in named) == sorted(n for n, k in law.days.items() for _ in range(k))
    # Only 中秋 on 10月1–3 shares a date: one date fewer, the law grants nothing for it.
    assert len(days) == sum(law.days.values()) - sum("、" in n for n in days.values())
    assert all(d.year == year for d in days)  # lunar festivals of lunar year Y fall in year Y
    by_name = {n: sorted(d for d, m in named if m == n) for n in law.days}
    assert date(year, 4, 4) <= by_name["清明节"][0] <= date(year, 4, 6)
    assert by_name["春节"][0].month in (1, 2)  # 除夕 or 初一
    assert by_name["中秋节"][0].month in (9, 10)
    assert by_name["端午节"][0].month in (5, 6)
    assert by_name["春节"] == [by_name["春节"][0] + timedelta(days=i) for i in range(law.days["春节"])]


@pytest.mark.parametrize("year", range(2008, 2100))
def test_qingming_agrees_with_chinese_calendars_solar_terms(year):
    # An independent formula; it gives 2100-04-04 where lunar_python computes 2100-04-05 00:43.
    terms = chinese_calendar.get_solar_terms(date(year, 4, 1), date(year, 4, 10))
    qingming = [d for d, term in terms if term == "清明"]
    assert qingming == [d for d, name in statutory_holidays(year).items() if name == "清明节"]


def test_2027_to_2100_have_13_days_but_where_mid_autumn_meets_national_day():
    shared = {y for y in range(2027, 2101) if len(statutory_holidays(y)) == 12}
    assert shared == {2028, 2031, 2039, 2058, 2066, 2077, 2085}
    assert statutory_holidays(2028)[date(2028, 10, 3)] == "国庆节、中秋节"
    assert all(len(statutory_holidays(y)) == 13 for y in set(range(2027, 2101)) - shared)


def test_law_versions_and_spring_festival_eve():
    assert [v.in_force_from for v in LAW_VERSIONS] == [date(2025, 1, 1), date(2014, 1, 1), date(2008, 1, 1)]
    assert [sum(v.days.values()) for v in LAW_VERSIONS] == [13, 11, 11]
    assert law_in_force(2024).title.endswith("国务院令第644号修订）") and law_in_force(2025).article == "第二条"
    # 除夕 is statutory 2008–2013 and from 2025, not 2014–2024.
    assert statutory_holidays(2013).get(date(2013, 2, 9)) == "春节"  # 2013 除夕, 初一 2-10
    assert date(2024, 2, 9) not in statutory_holidays(2024)
    assert statutory_holidays(2025)[date(2025, 1, 28)] == "春节"


def test_years_before_2008_are_refused():
    with pytest.raises(ValueError):
        statutory_holidays(2007)
    with pytest.raises(ValueError):
        law_in_force(1999)


def test_the_cached_result_cannot_be_altered_through_a_return_value():
    statutory_holidays(2030).clear()
    assert len(statutory_holidays(2030)) == 13

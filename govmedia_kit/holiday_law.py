"""Statutory public holidays for all citizens (全体公民放假的节日), computed from the law.

For *provisional* calendar years only: years whose State Council notice (国务院办公厅关于
某年部分节假日安排的通知) is not published yet. The provisional calendar is weekends plus
the days returned by `statutory_holidays`. What the notice alone decides is NOT derived:
make-up working days (调休上班, Art. 7 since 2025), bridge days, and the in-lieu days (补假)
that Art. 6 owes when a statutory day falls on a Saturday or Sunday — the law says a
working day is given, not which one, so none is invented here.

The law is 《全国年节及纪念日放假办法》, Art. 2 (第二条) in the version in force that year:

* from 2025-01-01, 2024-11-10 国务院令第795号 (fourth revision): 元旦 1 day (1 Jan);
  春节 4 (农历除夕、正月初一至初三); 清明节 1 (农历清明当日); 劳动节 2 (5月1日、2日);
  端午节 1 (农历端午当日); 中秋节 1 (农历中秋当日); 国庆节 3 (10月1日至3日) — 13 days.
  Art. 6: a holiday for all citizens on a Saturday/Sunday is made up on a working day (补假);
  new Art. 7: 统一放假调休 may be arranged, ≤ 6 consecutive working days around a holiday.
* 2014-01-01 to 2024-12-31, 2013-12-11 国务院令第644号 (third revision): as above but
  春节 3 (正月初一、初二、初三) and 劳动节 1 (5月1日) — 11 days; Art. 6 the same 补假 rule.
* 2008-01-01 to 2013-12-31, 2007-12-14 国务院令第513号 (second revision): 元旦 1;
  春节 3 (农历除夕、正月初一、初二); 清明 1; 劳动节 1; 端午 1; 中秋 1; 国庆 3 — 11 days.
The 2007 and 2013 texts call 元旦 "新年"; it is named 元旦 here for every year. Earlier
years (劳动节 3 days, no lunar festival but 春节) are not supported: ValueError.

Verified (search tool, stored public pages, not the live gov.cn): the 513 decree text on
zh.wikisource.org (国务院关于修改《全国年节及纪念日放假办法》的决定 (2007年)) and a
repost of 国务院令第513号; the 644 decree and the re-published text with Art. 2 and Art. 6
on big5.www.gov.cn/zhuanti/2013-12/11/content_2610576.htm; the 795 decree (amendments to
Art. 2 items 2 and 4, new Art. 7, in force 2025-01-01) as reposted by the Shaanxi justice
department and others, the re-published 2024 text (Art. 2 as above) on a third-party
site, and an English translation of 国务院令第795号 on ctaweb.org.cn. The Art. 6 wording of
the 2024 text was not seen whole (pages cut off at 第六条); that it is unchanged rests on
the decree, which amends only Art. 2 and adds Art. 7.

Dates: lunar dates and the 清明 solar term (Beijing time) come from lunar_python. Spring
Festival of year Y is lunar year Y's 正月初一; 除夕 is the day before it (腊月29 or 30). When
中秋 falls on 10月1–3 (e.g. 2020, 2031) the two festivals share a date: the law grants no
extra day for it, so that year has one date fewer, named "国庆节、中秋节".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Mapping

from lunar_python import Lunar


@dataclass(frozen=True)
class LawVersion:
    in_force_from: date
    title: str
    article: str  # the article listing the holidays for all citizens
    days: Mapping[str, int] = field(hash=False)  # festival -> days off, as the article says
    spring_festival_eve: bool  # whether 春节's days start on 除夕 (else on 正月初一)


def _days(spring: int, labour: int) -> Mapping[str, int]:
    return MappingProxyType({"元旦": 1, "春节": spring, "清明节": 1, "劳动节": labour,
                             "端午节": 1, "中秋节": 1, "国庆节": 3})


# Newest first: law_in_force takes the first one already in force.
LAW_VERSIONS: tuple[LawVersion, ...] = (
    LawVersion(date(2025, 1, 1), "《全国年节及纪念日放假办法》（2024年11月10日国务院令第795号修订）",
               "第二条", _days(4, 2), spring_festival_eve=True),
    LawVersion(date(2014, 1, 1), "《全国年节及纪念日放假办法》（2013年12月11日国务院令第644号修订）",
               "第二条", _days(3, 1), spring_festival_eve=False),
    LawVersion(date(2008, 1, 1), "《全国年节及纪念日放假办法》（2007年12月14日国务院令第513号修订）",
               "第二条", _days(3, 1), spring_festival_eve=True),
)


def law_in_force(year: int) -> LawVersion:
    """The version of the law in force on 1 January of `year` (versions change on 1 Jan)."""
    for version in LAW_VERSIONS:
        if version.in_force_from <= date(year, 1, 1):
            return version
    raise ValueError(f"{year}: holidays before {LAW_VERSIONS[-1].in_force_from.year} are not supported")


def statutory_holidays(year: int) -> dict[date, str]:
    """Every statutory rest day of `year` under the law then in force, weekend days included,
    named in Chinese ("春节", …). No 补假 or 调休: those come only with the annual notice."""
    return dict(_statutory_holidays(year))


def _solar(lunar: Lunar) -> date:
    s = lunar.getSolar()
    return date(s.getYear(), s.getMonth(), s.getDay())


@lru_cache(maxsize=None)  # lunar_python builds a solar-term table per call: slow enough to keep
def _statutory_holidays(year: int) -> tuple[tuple[date, str], ...]:
    law = law_in_force(year)
    new_year = Lunar.fromYmd(year, 1, 1)  # 正月初一 of lunar year `year`, in Jan/Feb of `year`
    first_day = _solar(new_year)
    qingming = new_year.getJieQiTable()["清明"]  # lunar year `year` runs to Jan/Feb of year + 1
    start = first_day - timedelta(days=1) if law.spring_festival_eve else first_day
    days: dict[date, list[str]] = {}

    def add(first: date, name: str) -> None:
        for i in range(law.days[name]):
            days.setdefault(first + timedelta(days=i), []).append(name)

    add(date(year, 1, 1), "元旦")
    add(start, "春节")
    add(date(qingming.getYear(), qingming.getMonth(), qingming.getDay()), "清明节")
    add(date(year, 5, 1), "劳动节")
    add(_solar(Lunar.fromYmd(year, 5, 5)), "端午节")  # month 5, not a leap 闰五月
    add(_solar(Lunar.fromYmd(year, 8, 15)), "中秋节")
    add(date(year, 10, 1), "国庆节")
    return tuple(sorted((d, "、".join(sorted(names, key=_ORDER.index))) for d, names in days.items()))


# Name order for a shared date, as the notices write it (2020: "国庆节、中秋节").
_ORDER = ("元旦", "春节", "清明节", "劳动节", "端午节", "国庆节", "中秋节")

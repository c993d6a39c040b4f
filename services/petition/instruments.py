"""The petition service's SLA gauges on GET /metrics (govmedia_kit/metrics.py), read from
its own tables by a periodic task (GOVMEDIA_METRICS_REFRESH_S, default 15 s); the gauges'
callbacks answer the figures of the last round.

- `govmedia_petition_sla_timers_fired{kind}`: SLA timers fired so far, per kind: `warning`
  (the warning at the policy's share of the period), `breach` (the deadline passed),
  `reminder` (催办), `notice` (通报), `supervision_due`. Cumulative: alert on `increase(…)`.
- `govmedia_petition_sla_overdue_open`: cases whose clock is running past its deadline.
- `govmedia_calendar_covered_days`: days after today that the official calendar still
  covers (ops' notices, `GOVMEDIA_CALENDAR_FILE`, chinesecalendar); -1 when not even today.
  Deadlines beyond it are provisional: alert below 60.
- `govmedia_calendar_provisional_deadlines`: open cases whose deadline rests on a provisional
  year; `govmedia_calendar_provisional_first_due_days`: days from today to the earliest last day
  of those (-1: none). While any exists a warning is logged once a day naming the year to load.

Counts only: no petition ids, no units, nothing about a citizen.
"""
from __future__ import annotations

from sqlalchemy import func, select

from govmedia_kit import metrics, workdays
from govmedia_kit.calendar_book import ProvisionalDeadlines
from govmedia_kit.db import utcnow

from .models import Petition, Timer, calendar_book


KINDS = ("warning", "breach", "reminder", "notice", "supervision_due")

_gauges: metrics.CachedGauges | None = None


def gauges() -> metrics.CachedGauges:
    global _gauges
    if _gauges is None:
        g = metrics.CachedGauges()
        g.gauge("govmedia_petition_sla_timers_fired", "SLA timers fired so far, per kind (warning, breach, …)",
                "{timer}")
        g.gauge("govmedia_petition_sla_overdue_open", "Cases whose SLA clock runs past its deadline", "{petition}")
        # Exported as govmedia_calendar_covered_days (the unit is appended).
        g.gauge("govmedia_calendar_covered", "Days after today the official working-day calendar covers", "d")
        _gauges = g
    return _gauges


_provisional: ProvisionalDeadlines | None = None


def provisional_deadlines() -> ProvisionalDeadlines:
    global _provisional
    if _provisional is None:
        _provisional = ProvisionalDeadlines(gauges(), "petition")
    return _provisional


async def refresh(rt) -> None:
    T, P = Timer.__table__, Petition.__table__
    async with rt.db.session() as s:
        fired = (await s.execute(select(T.c.kind, func.count()).where(T.c.fired_at.is_not(None))
                                 .group_by(T.c.kind))).all()
        # Walks the (sla_running, due_at) index.
        overdue = await s.scalar(select(func.count()).select_from(P)
                                 .where(P.c.sla_running.is_(True), P.c.due_at <= utcnow()))
        cal = await calendar_book.refresh(s)
        provisional, first_due = (await s.execute(
            select(func.count(), func.min(P.c.sla_last_day))
            .where(P.c.sla_running.is_(True), P.c.sla_calendar == workdays.PROVISIONAL))).one()
    counts = dict.fromkeys(KINDS, 0)
    counts.update({kind: int(n) for kind, n in fired})
    g = gauges()
    g.replace("govmedia_petition_sla_timers_fired", [({"kind": k}, n) for k, n in counts.items()])
    g.set("govmedia_petition_sla_overdue_open", int(overdue or 0))
    today = workdays.local_date(utcnow())
    g.set("govmedia_calendar_covered", workdays.covered_days(today))
    provisional_deadlines().report(cal, today, int(provisional or 0), first_due)


# ServiceSpec.workers entry: recompute the figures now and then.
worker = metrics.refresher(refresh, "petition SLA gauges")

"""The account service's calendar gauges on GET /metrics (govmedia_kit/metrics.py), read from
its own tables by a periodic task (GOVMEDIA_METRICS_REFRESH_S, default 15 s):

- `govmedia_calendar_provisional_deadlines`: filings owed whose due date rests on a provisional
  year; `govmedia_calendar_provisional_first_due_days`: days from today to the earliest of those
  (-1: none). While any exists a warning is logged once a day naming the year to load. The
  petition service exports the same two for its cases; the scrape's `job` tells them apart.

Counts only: no account ids, no units.
"""
from __future__ import annotations

from sqlalchemy import func, select

from govmedia_kit import metrics, workdays
from govmedia_kit.calendar_book import ProvisionalDeadlines
from govmedia_kit.db import utcnow

from .calendar_models import calendar_book
from .models import Filing

_provisional: ProvisionalDeadlines | None = None


def provisional_deadlines() -> ProvisionalDeadlines:
    global _provisional
    if _provisional is None:
        _provisional = ProvisionalDeadlines(metrics.CachedGauges(), "filing")
    return _provisional


async def refresh(rt) -> None:
    async with rt.db.session() as s:
        cal = await calendar_book.refresh(s)
        count, first_due = (await s.execute(
            select(func.count(), func.min(Filing.due_on))
            .where(Filing.filed_on.is_(None), Filing.calendar == workdays.PROVISIONAL))).one()
    provisional_deadlines().report(cal, workdays.local_date(utcnow()), int(count or 0), first_due)


# ServiceSpec.workers entry: recompute the figures now and then.
worker = metrics.refresher(refresh, "account calendar gauges")

"""Dispatch's operational gauges on GET /metrics (govmedia_kit/metrics.py), read from this
service's own tables by a periodic task (GOVMEDIA_METRICS_REFRESH_S, default 15 s); the
gauges' callbacks answer the figures of the last round.

- `govmedia_dispatch_deliveries{kind, state}`: deliveries per kind (publish | kill) and state
  (pending, in_flight, delivered, acknowledged, failed, cancelled).
- `govmedia_dispatch_retractions_open`: retractions not yet completed.
- `govmedia_dispatch_kills_outstanding`: kills of open retractions not yet confirmed.
- `govmedia_dispatch_kill_completeness_ratio`: confirmed kills / kills over all open
  retractions (1 when none is open); `govmedia_dispatch_kill_completeness_min_ratio`: the
  lowest of one open retraction. Confirmed = acknowledged, or the client answered 410 Gone.
- `govmedia_dispatch_retraction_oldest_open_age_seconds`: how long the oldest open
  retraction has been running (0 when none).

(services/dispatch/metrics.py is something else: the clients' reads, likes and shares.)
"""
from __future__ import annotations

from sqlalchemy import and_, case, func, or_, select

from govmedia_kit import metrics
from govmedia_kit.db import as_utc, utcnow

from .models import ACKNOWLEDGED, FAILED, KILL, PUBLISH, STATES, Delivery, Retraction

OPEN_MEASURED = 1000  # open retractions measured per round, oldest first

_gauges: metrics.CachedGauges | None = None


def gauges() -> metrics.CachedGauges:
    global _gauges
    if _gauges is None:
        g = metrics.CachedGauges()
        g.gauge("govmedia_dispatch_deliveries", "Deliveries per kind (publish, kill) and state", "{delivery}")
        g.gauge("govmedia_dispatch_retractions_open", "Retractions whose kills are not all confirmed")
        g.gauge("govmedia_dispatch_kills_outstanding", "Kills of open retractions not yet confirmed", "{delivery}")
        g.gauge("govmedia_dispatch_kill_completeness_ratio",
                "Confirmed kills / kills over the open retractions (1: none open)", "1")
        g.gauge("govmedia_dispatch_kill_completeness_min_ratio",
                "Lowest share of confirmed kills of one open retraction (1: none open)", "1")
        g.gauge("govmedia_dispatch_retraction_oldest_open_age",
                "How long the oldest open retraction has been running (0: none)", "s")
        _gauges = g
    return _gauges


async def refresh(rt) -> None:
    D, R = Delivery.__table__, Retraction.__table__
    confirmed = or_(D.c.state == ACKNOWLEDGED, and_(D.c.state == FAILED, D.c.gone.is_(True)))
    async with rt.db.session() as s:
        per_state = (await s.execute(select(D.c.kind, D.c.state, func.count()).group_by(D.c.kind, D.c.state))).all()
        open_count = int(await s.scalar(select(func.count()).select_from(R).where(R.c.completed_at.is_(None))) or 0)
        open_rows = (await s.execute(select(R.c.item_id, R.c.target_count, R.c.started_at)
                                     .where(R.c.completed_at.is_(None)).order_by(R.c.started_at)
                                     .limit(OPEN_MEASURED))).all()
        progress = {}
        if open_rows:
            progress = {r[0]: (int(r[1]), int(r[2] or 0)) for r in (await s.execute(
                select(D.c.item_id, func.count(), func.sum(case((confirmed, 1), else_=0)))
                .where(D.c.item_id.in_([r.item_id for r in open_rows]), D.c.kind == KILL)
                .group_by(D.c.item_id))).all()}

    g = gauges()
    counts = {(kind, state): 0 for kind in (PUBLISH, KILL) for state in STATES}
    for kind, state, n in per_state:
        counts[(kind, state)] = int(n)
    g.replace("govmedia_dispatch_deliveries", [({"kind": k, "state": st}, n) for (k, st), n in counts.items()])

    kills = done = 0
    lowest = 1.0
    for r in open_rows:
        made, ok = progress.get(r.item_id, (0, 0))
        want = max(made, int(r.target_count or 0))  # kills not yet created are outstanding too
        kills, done = kills + want, done + ok
        lowest = min(lowest, ok / want if want else 1.0)
    g.set("govmedia_dispatch_retractions_open", open_count)
    g.set("govmedia_dispatch_kills_outstanding", kills - done)
    g.set("govmedia_dispatch_kill_completeness_ratio", done / kills if kills else 1.0)
    g.set("govmedia_dispatch_kill_completeness_min_ratio", lowest)
    oldest = as_utc(open_rows[0].started_at) if open_rows else None
    g.set("govmedia_dispatch_retraction_oldest_open_age",
          max((utcnow() - oldest).total_seconds(), 0.0) if oldest else 0.0)


# ServiceSpec.workers entry: recompute the figures now and then.
worker = metrics.refresher(refresh, "dispatch gauges")

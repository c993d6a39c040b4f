"""The stragglers' watch: a retraction still outstanding DISPATCH_STRAGGLER_ALERT_S after
it started raises `govmedia.dispatch.retraction.stragglers` for ops, once per retraction."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import iso, utcnow
from govmedia_kit.runtime import Runtime, periodically

from . import store
from .models import PENDING, Retraction
from .usecases import complete_if_done

log = logging.getLogger(__name__)
SUBJECT = "govmedia.dispatch.retraction.stragglers"
MAX_LISTED = 1000  # stragglers named in one event; `outstanding` has the full count


async def check_stragglers(rt: Runtime) -> int:
    """Raise the alert for every retraction past its time with kills outstanding; answers how many."""
    alert_s = rt.settings.straggler_alert_s
    now = utcnow()
    raised = 0
    async with rt.unit_of_work() as s:
        due = (await s.execute(
            select(Retraction).where(Retraction.completed_at.is_(None), Retraction.stragglers_alerted_at.is_(None),
                                     Retraction.started_at <= now - timedelta(seconds=alert_s))
            .order_by(Retraction.started_at).limit(100))).scalars().all()
        for r in due:
            targets, done = (await store.kill_progress(s, [r.item_id]))[r.item_id]
            stragglers = await store.kill_stragglers(s, r.item_id, after=0, limit=MAX_LISTED)
            if not stragglers:
                await complete_if_done(rt, s, [r.item_id])
                continue
            claimed = await s.execute(update(Retraction).where(Retraction.item_id == r.item_id,
                                                               Retraction.stragglers_alerted_at.is_(None))
                                      .values(stragglers_alerted_at=now))
            if claimed.rowcount != 1:
                continue  # another process raised it
            await rt.outbox.emit(s, SUBJECT, ev.RetractionStragglers(
                item_id=r.item_id, unit_id=r.unit_id, targets=targets, confirmed=done,
                outstanding=targets - done, started_at=iso(r.started_at), alert_after_s=int(alert_s),
                stragglers=[ev.RetractionStraggler(
                    account_id=k.account_id, delivery_id=k.id, state=k.state, attempts=k.attempts,
                    last_error=k.last_error or "", next_attempt_at=iso(k.next_attempt_at) if k.state == PENDING else "")
                    for k in stragglers],
                truncated=targets - done > len(stragglers)), r.item_id)
            raised += 1
            log.warning("retraction of %s: %d of %d kills outstanding after %ss", r.item_id, targets - done, targets, alert_s)
    return raised


async def worker(rt: Runtime, stop) -> None:
    await periodically(lambda: check_stragglers(rt), rt.settings.straggler_check_s, stop, "stragglers watch",
                       run_first=False)

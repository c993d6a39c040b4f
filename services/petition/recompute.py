"""Deadlines counted again when the calendar changes (a provisional year made official by the
State Council's notice, or official dates corrected).

Every open case whose clock rests on a year that changed since it was counted
(`calendar_book.stale_deadlines`) is counted again from its original start, pauses and extension
on the calendar now in force. When the deadline or the warning moves, the case's timeline says
"old → new (notice …)" (the citizen sees it on tracking), its pending warning and breach are
rescheduled (what fired stays fired, so nothing fires twice; an instant now past fires at once,
once), a pending 催办 follows the new last day, and `govmedia.petition.sla.recomputed` is emitted.
Closed cases are not touched.

Every replica sweeps when its calendar changes (`calendar_book.watch`: it reads the newest
revision every `PETITION_CALENDAR_POLL_S`, and at once when this process applied a calendar
event), and once an hour besides; cases are claimed with SKIP LOCKED, so replicas share the work.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit import workdays
from govmedia_kit.calendar_book import NoticeYear, stale_deadlines, why_moved
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.runtime import Runtime

from .domain import local_iso
from .models import Petition, Timer, TimelineEntry, calendar_book
from .timers import at_nine
from .usecases import RECOMPUTED_ACTION, SYSTEM, apply_clock, schedule

log = logging.getLogger(__name__)
RECOMPUTED = "govmedia.petition.sla.recomputed"


def stale_cases(cal: workdays.WorkCalendar, notices: list[NoticeYear]):
    return Petition.sla_running.is_(True) & stale_deadlines(
        cal, notices, basis=Petition.sla_calendar, revision=Petition.sla_calendar_rev, last_day=Petition.sla_last_day,
        starts_before=lambda day: Petition.sla_started_at < workdays.start_of_day(day))


async def recount(rt: Runtime, s: AsyncSession, p: Petition, cal: workdays.WorkCalendar,
                  notices: list[NoticeYear], now: datetime) -> bool:
    """Count the case's clock again on `cal`; True when its deadline or warning moved."""
    old_last, old_due, old_warn = p.sla_last_day, as_utc(p.due_at), as_utc(p.warn_at)
    apply_clock(p, now, cal)
    s.add(p)
    if (p.sla_last_day, as_utc(p.due_at), as_utc(p.warn_at)) == (old_last, old_due, old_warn):
        return False
    notice, why = why_moved(notices, workdays.local_date(as_utc(p.sla_started_at)).year,
                            max(old_last, p.sla_last_day).year, p.sla_calendar == workdays.PROVISIONAL)
    s.add(TimelineEntry(petition_id=p.id, at=now, actor=SYSTEM, action=RECOMPUTED_ACTION,
                        note=f"办理期限重新计算：{old_last.isoformat()} → {p.sla_last_day.isoformat()}{why}"))
    p.updated_at = now
    if not p.sla_paused:
        await schedule(s, p)
    # A 催办 already scheduled (the breach fired) follows the new last day.
    for t in (await s.exec(select(Timer).where(Timer.petition_id == p.id, Timer.kind == "reminder",
                                               Timer.fired_at.is_(None)))).all():
        t.due_at = at_nine(cal.next_workday(p.sla_last_day))
        s.add(t)
    await rt.outbox.emit(s, RECOMPUTED, ev.DeadlineRecomputed(
        about_id=p.id, kind=p.sla_stage, unit_id=p.unit_id or p.desk_unit_id or "", old_due=local_iso(old_due),
        new_due=local_iso(p.due_at), old_warn=local_iso(old_warn), new_warn=local_iso(p.warn_at),
        calendar=p.sla_calendar, notice_number=notice, calendar_revision=cal.revision), p.id)
    log.info("petition %s: deadline recomputed %s → %s (%s calendar)", p.id, old_last, p.sla_last_day, p.sla_calendar)
    return True


async def sweep(rt: Runtime, batch: int = 200) -> int:
    """Count again every open clock resting on a changed year; answers how many moved."""
    moved = 0
    while True:
        async with rt.unit_of_work() as s:
            cal = await calendar_book.refresh(s)
            notices = await calendar_book.years(s)
            rows = (await s.exec(select(Petition).where(stale_cases(cal, notices)).order_by(Petition.id)
                                 .limit(batch).with_for_update(skip_locked=True, of=Petition))).all()
            now = utcnow()
            for p in rows:
                moved += await recount(rt, s, p, cal, notices, now)
        if len(rows) < batch:
            break
    if moved:
        wake = rt.state.get("timer_wake")
        if wake is not None:
            wake.set()
        log.info("%d open deadlines recomputed on the calendar of revision %d", moved, cal.revision)
    return moved


async def worker(rt: Runtime, stop: asyncio.Event) -> None:
    await calendar_book.watch(rt, stop, lambda: sweep(rt), rt.settings.calendar_poll_s)

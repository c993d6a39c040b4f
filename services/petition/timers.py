"""SLA timers: stored rows (`petition_timers`), fired once each, within a second of due.

The worker sleeps until the earliest pending instant (at most `PETITION_TIMER_POLL_S`, so a
timer written by another replica is seen in time) and is woken at once when this process
changes a clock. Firing claims the rows (`UPDATE … SET fired_at WHERE fired_at IS NULL`, only
what the update returns is fired) and writes the consequences — events (outbox), the
supervision record, the timeline, the next timer of the ladder — in one transaction; rows
another replica holds are skipped (PostgreSQL `FOR UPDATE SKIP LOCKED`; SQLite serialises
writers). So with any number of replicas on one database nothing fires twice, and a crash
fires it on the next start.

The ladder: a warning at the policy's share of the period; the breach at the deadline, which
opens a supervision record (督办) for the supervisors of the region; a reminder (催办) at 09:00
of the next working day after the last day; a public-notice flag (通报) five working days after
the reminder if the case is still not done.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, time, timedelta

from sqlalchemy import exists, insert, update
from sqlmodel import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit import workdays
from govmedia_kit.db import as_utc, new_id, utcnow
from govmedia_kit.runtime import Runtime, wait_any

from .domain import local_iso, redacted
from .models import Petition, Supervision, Timer, TimelineEntry, calendar_book
from .usecases import schedule

log = logging.getLogger(__name__)
SLA = "govmedia.petition.sla."
SYSTEM = "system"
OFFICE_HOURS = time(9, 0)
NOTICE_AFTER = 5  # working days after the reminder
_SUBJECT = {"warning": "warning", "breach": "breached", "reminder": "reminder", "notice": "public_notice",
            "supervision_due": "supervision_due"}
_ROLES = {"warning": ["handler"], "breach": ["handler", "principal", "supervisor"],
          "reminder": ["handler", "principal", "supervisor"], "notice": ["principal", "supervisor"],
          "supervision_due": ["handler", "principal", "supervisor"]}
_NOTE = {"warning": "办理时限即将届满", "breach": "已超过办理时限，转入督办", "reminder": "督办：催办",
         "notice": "督办：仍未办结，列入通报", "supervision_due": "督办期限已到"}


def at_nine(day) -> datetime:
    return workdays.start_of_day(day) + timedelta(hours=OFFICE_HOURS.hour)


async def fire_due(rt: Runtime, limit: int = 500, now: datetime | None = None) -> list[tuple[Timer, float]]:
    """Fire what is due, in one transaction with set-wise writes (a few statements per batch,
    plus one outbox row per event); answers the fired timers with their lateness in seconds."""
    now = now or utcnow()
    fired: list[tuple[Timer, float]] = []
    async with rt.unit_of_work() as s:
        rows = (await s.exec(
            select(Timer, Petition).join(Petition, Petition.id == Timer.petition_id)
            .where(Timer.fired_at.is_(None), Timer.due_at <= now)
            .order_by(Timer.due_at).limit(limit).with_for_update(skip_locked=True, of=Timer))).all()
        if not rows:
            return fired
        s.expunge_all()  # read-only snapshots from here: every write below is a set-wise statement
        # The claim: only rows still unfired become ours. SKIP LOCKED already keeps replicas apart
        # on PostgreSQL and SQLite's write lock serialises them; the condition holds without either.
        claimed = set((await s.execute(
            update(Timer).where(Timer.id.in_([t.id for t, _ in rows]), Timer.fired_at.is_(None))
            .values(fired_at=now).returning(Timer.id).execution_options(synchronize_session=False))).scalars())
        rows = [(t, p) for t, p in rows if t.id in claimed]
        live = [(t, p) for t, p in rows if t.kind == "supervision_due" or
                (p.sla_running and not p.sla_paused and p.sla_stage == t.stage)]
        # (a stale row — the case moved on since the timer was set — is consumed silently)
        cal = await calendar_book.refresh(s)
        open_sv: dict[str, Supervision] = {}
        need = [p.id for t, p in live if t.kind != "breach"]
        if need:
            for sv in (await s.exec(select(Supervision).where(Supervision.petition_id.in_(need),
                                                              Supervision.status == "open")
                                    .order_by(Supervision.opened_at))).all():
                open_sv[sv.petition_id] = sv
        new_sv, new_timers, entries, reminded, noticed, breached = [], [], [], [], [], []
        for t, p in live:
            sv_id = open_sv[p.id].id if p.id in open_sv else ""
            if t.kind == "breach":
                breached.append(p.id)
                sv_id = new_id()
                new_sv.append(dict(id=sv_id, petition_id=p.id, unit_id=p.unit_id or p.desk_unit_id,
                                   region_path=p.region_path or p.desk_region_path, reason="breach", status="open",
                                   opened_by=SYSTEM, opened_at=now))
                follow = _follow_up(cal, p, "reminder", lambda: cal.next_workday(p.sla_last_day))
            elif t.kind == "reminder":
                reminded.append(sv_id)
                day = workdays.local_date(as_utc(t.due_at))
                follow = _follow_up(cal, p, "notice", lambda: cal.add_workdays(day, NOTICE_AFTER))
            else:
                follow = None
                if t.kind == "notice":
                    noticed.append(sv_id)
            if follow is not None:
                new_timers.append(dict(id=new_id(), petition_id=p.id, kind=follow[0], stage=p.sla_stage,
                                       due_at=follow[1], fired_at=None, cancelled=False))
            entries.append(dict(id=new_id(), petition_id=p.id, at=now, actor=SYSTEM, action=f"sla_{t.kind}",
                                note=_NOTE[t.kind], public=False))
            await rt.outbox.emit(s, SLA + _SUBJECT[t.kind], ev.PetitionSlaAlert(
                petition_id=p.id, kind=_SUBJECT[t.kind], category=p.category, stage=t.stage,
                unit_id=p.unit_id or p.desk_unit_id or "", region_path=p.region_path or p.desk_region_path or "",
                title=redacted(p.title), due_at=local_iso(p.due_at), fired_at=local_iso(now), supervision_id=sv_id,
                notify_roles=_ROLES[t.kind]), p.id)
            fired.append((t, (now - as_utc(t.due_at)).total_seconds()))
        if breached:
            await s.execute(update(Petition).where(Petition.id.in_(breached)).values(breached_at=now))
        for table, values in ((Supervision, new_sv), (Timer, new_timers), (TimelineEntry, entries)):
            if values:
                await s.execute(insert(table), values)
        if reminded := [i for i in reminded if i]:
            await s.execute(update(Supervision).where(Supervision.id.in_(reminded)).values(reminded_at=now))
        if noticed := [i for i in noticed if i]:
            await s.execute(update(Supervision).where(Supervision.id.in_(noticed)).values(public_notice_at=now))
    if fired:
        log.info("%d SLA timers fired", len(fired))
    return fired


def _follow_up(cal, p: Petition, kind: str, day) -> tuple[str, datetime] | None:
    try:
        return kind, at_nine(day())
    except workdays.CalendarNotCovered as exc:
        log.error("petition %s: no %s scheduled, calendar %d not loaded", p.id, kind, exc.year)
        return None


async def next_due(rt: Runtime) -> datetime | None:
    async with rt.db.session() as s:
        # ORDER BY … LIMIT 1 walks the (fired_at, due_at) index; it stops at the first row.
        value = await s.scalar(select(Timer.due_at).where(Timer.fired_at.is_(None)).order_by(Timer.due_at).limit(1))
    return as_utc(value)


async def reconcile(rt: Runtime, batch: int = 1000) -> int:
    """Running clocks without a pending or fired timer of their stage (cases from before the
    timers existed) get their timers. Run at start-up."""
    made = 0
    while True:
        async with rt.unit_of_work() as s:
            # Locked, so two replicas starting together never schedule the same case twice (a
            # case another process holds — a replica's reconcile, or a use case — is skipped).
            rows = (await s.exec(select(Petition).where(
                Petition.sla_running.is_(True), Petition.sla_paused.is_(False),
                ~exists().where(Timer.petition_id == Petition.id, Timer.stage == Petition.sla_stage))
                .limit(batch).with_for_update(skip_locked=True, of=Petition))).all()
            for p in rows:
                await schedule(s, p)
        made += len(rows)
        if len(rows) < batch:
            return made


async def worker(rt: Runtime, stop: asyncio.Event) -> None:
    rt.state.setdefault("timer_wake", asyncio.Event())
    try:
        if await reconcile(rt):
            log.info("SLA timers reconciled")
    except Exception:
        log.exception("SLA timer reconciliation failed")
    await run_loop(rt, stop)


async def run_loop(rt: Runtime, stop: asyncio.Event) -> None:
    """Fire what is due, then sleep until the next due instant (or a wake, or the poll)."""
    wake = rt.state.setdefault("timer_wake", asyncio.Event())
    poll = rt.settings.timer_poll_s
    while not stop.is_set():
        wake.clear()
        delay = poll
        try:
            while len(await fire_due(rt)) >= 500:
                pass
            due = await next_due(rt)
            if due is not None:
                delay = min(max((due - utcnow()).total_seconds(), 0.0), poll)
        except Exception:
            log.exception("SLA timers failed; retrying")
        if await wait_any((stop, wake), delay):
            return

"""Urgent items (突发): every level of their review runs against the deadline its chain gave it.

When a level of an urgent review starts waiting, it gets `due_at` (now + its deadline) and
`escalate_at` (one more deadline-length later). A background worker, every
REVIEW_OVERDUE_CHECK_INTERVAL_S, finds waiting levels past either and emits
`govmedia.review.level.overdue` once per stage: "reminder" (the level's holders) and then,
still undecided, "escalated" (the next level's roles; after the last level, the unit's
principal). The flag of each stage is set in the same transaction as its outbox event, and
rows another replica is flagging are skipped (PostgreSQL), so nothing is announced twice.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_
from sqlmodel import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import iso, utcnow
from govmedia_kit.runtime import Runtime, periodically

from .models import Review, ReviewLevel, trail
from .store import levels_of

log = logging.getLogger(__name__)

OVERDUE = "govmedia.review.level.overdue"
SYSTEM = "system"


def start_clock(review: Review, level: ReviewLevel, now: datetime) -> None:
    """The level starts waiting now: set its deadlines when the item is urgent."""
    if review.urgent:
        step = timedelta(minutes=level.deadline_minutes)
        level.due_at, level.escalate_at = now + step, now + 2 * step


def overdue_filter(now: datetime):
    """Reviews whose current level of an urgent item is past its deadline (for `overdue=true`)."""
    return and_(Review.state == "in_review", Review.urgent.is_(True), exists().where(
        ReviewLevel.review_id == Review.id, ReviewLevel.level == Review.current_level,
        ReviewLevel.decision.is_(None), ReviewLevel.due_at <= now))


async def report_overdue(rt: Runtime) -> int:
    """Emit what is due: a reminder for each level past its deadline, an escalation for each
    past twice its deadline, each once. Returns how many events were emitted."""
    now = utcnow()
    emitted = 0
    async with rt.unit_of_work() as s:
        rows = (await s.exec(
            select(ReviewLevel, Review).join(Review, Review.id == ReviewLevel.review_id).where(
                Review.state == "in_review", Review.urgent.is_(True), ReviewLevel.level == Review.current_level,
                ReviewLevel.decision.is_(None),
                or_(and_(ReviewLevel.due_at <= now, ReviewLevel.reminded_at.is_(None)),
                    and_(ReviewLevel.escalate_at <= now, ReviewLevel.escalated_at.is_(None))))
            .order_by(ReviewLevel.id).with_for_update(skip_locked=True, of=ReviewLevel))).all()
        for level, review in rows:
            levels = await levels_of(s, review.id)
            later = [lv for lv in levels if lv.level > level.level]
            next_roles = list(later[0].holder_roles) if later else ["principal"]
            stages = []
            if level.reminded_at is None:
                level.reminded_at = now
                stages.append("reminder")
            if level.escalate_at is not None and level.escalate_at <= now and level.escalated_at is None:
                level.escalated_at = now
                stages.append("escalated")
            s.add(level)
            for stage in stages:
                await rt.outbox.emit(s, OVERDUE, ev.ReviewLevelOverdue(
                    review_id=review.id, item_id=review.item_id, unit_id=review.unit_id, title=review.title,
                    level=level.level, holder_roles=list(level.holder_roles), next_roles=next_roles,
                    due_at=iso(level.due_at), stage=stage), review.item_id)
                await trail.append(s, review.item_id, f"level_overdue_{stage}", SYSTEM, None,
                                   {"review_id": review.id, "level": level.level, "due_at": iso(level.due_at),
                                    "told": list(level.holder_roles) if stage == "reminder" else next_roles},
                                   at=now)
                emitted += 1
    if emitted:
        log.warning("%d overdue notices for urgent reviews emitted", emitted)
    return emitted


async def worker(rt: Runtime, stop: asyncio.Event) -> None:
    await periodically(lambda: report_overdue(rt), rt.settings.overdue_check_interval_s, stop,
                       "urgent review deadline check")

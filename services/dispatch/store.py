"""Set-based reads and writes of deliveries: one statement per batch, never one per row,
so an approval to 10,000 accounts is one insert and a worker round a handful of updates."""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, case, event, exists, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel.ext.asyncio.session import AsyncSession

from .domain import TargetRule, region_subtree
from .models import (
    ACKNOWLEDGED, CANCELLED, FAILED, IN_FLIGHT, KILL, OPEN_STATES, PENDING, PUBLISH, WEBHOOK, Account, Delivery,
    Region, Retraction,
)

D = Delivery.__table__
A = Account.__table__
_SEQ_LOCK = 0x6469737061746368  # "dispatch": serialises the writers that allocate delivery seqs


# --- waking the worker and the streams ---------------------------------------------------

class Signal:
    """Wakes every waiter (the webhook worker, each open stream) once new deliveries commit."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        current, self._event = self._event, asyncio.Event()
        current.set()

    def waiter(self) -> asyncio.Event:
        """Take this before reading, then wait on it: nothing committed in between is missed."""
        return self._event


def notify_after_commit(session: AsyncSession, signal: Signal) -> None:
    """Before the commit a woken reader would find nothing, so ring only after it."""
    event.listen(session.sync_session, "after_commit", lambda _s: signal.notify(), once=True)


# --- locks (PostgreSQL; SQLite serialises writers by itself) -------------------------------

def _pg(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def lock_seq(session: AsyncSession) -> None:
    """Seqs must commit in order or a stream reading `seq > cursor` could skip one: the
    transactions that insert deliveries take this lock first and hold it to their commit."""
    if _pg(session):
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEQ_LOCK})


async def lock_items(session: AsyncSession, item_ids) -> None:
    """One lock per retracted item, so two acknowledgements committing together cannot both
    miss the other and leave a finished retraction open. Sorted: no deadlock."""
    if not _pg(session):
        return
    for item_id in sorted(set(item_ids)):
        key = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big", signed=True)
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


# --- targeting and creation ----------------------------------------------------------------

async def resolve_targets(session: AsyncSession, rule: TargetRule) -> list[tuple[str, str, bool]]:
    """(account id, delivery mode, endpoint active) of every active account the rule selects."""
    if rule.empty:
        return []
    stmt = select(A.c.id, A.c.delivery_mode, A.c.endpoint_active).where(
        A.c.status == "active", A.c.endpoint_active.is_(True))
    if rule.regions:
        parents = dict((await session.execute(select(Region.id, Region.parent_id))).all())
        stmt = stmt.where(A.c.region_id.in_(region_subtree(rule.regions, parents)))
    if rule.platforms:
        stmt = stmt.where(A.c.platform.in_(rule.platforms))
    if rule.accounts:
        stmt = stmt.where(A.c.id.in_(rule.accounts))
    return [tuple(r) for r in (await session.execute(stmt.order_by(A.c.id))).all()]


async def publish_targets(session: AsyncSession, item_id: str) -> list[tuple[str, str, bool]]:
    """Every account a publish of the item went or was going to (for its kill)."""
    stmt = (
        select(A.c.id, A.c.delivery_mode, A.c.endpoint_active)
        .where(A.c.id.in_(select(D.c.account_id).where(D.c.item_id == item_id, D.c.kind == PUBLISH)))
        .order_by(A.c.id)
    )
    return [tuple(r) for r in (await session.execute(stmt)).all()]


async def insert_deliveries(session: AsyncSession, rows: list[dict]) -> None:
    """One bulk insert; a row that exists already (same item, version, account, kind) is skipped."""
    if not rows:
        return
    ins = pg_insert(D) if _pg(session) else sqlite_insert(D)
    ins = ins.on_conflict_do_nothing(index_elements=["item_id", "version", "account_id", "kind"])
    for start in range(0, len(rows), 2000):  # SQLite caps the bound parameters of one statement
        await session.execute(ins, rows[start:start + 2000])


async def cancel_pending_publishes(session: AsyncSession, now: datetime, item_id: str | None = None,
                                   below_version: int | None = None) -> int:
    """Publishes not sent yet, of one item (or of every retracted item): a kill wins."""
    stmt = update(D).where(D.c.kind == PUBLISH, D.c.state == PENDING)
    if item_id is not None:
        stmt = stmt.where(D.c.item_id == item_id)
    else:
        stmt = stmt.where(D.c.item_id.in_(select(Retraction.item_id)))
    if below_version is not None:
        stmt = stmt.where(D.c.version < below_version)
    res = await session.execute(stmt.values(state=CANCELLED, cancelled_at=now, updated_at=now))
    return res.rowcount or 0


# --- the webhook worker ------------------------------------------------------------------

@dataclass
class Claimed:
    id: str
    seq: int
    item_id: str
    version: int
    account_id: str
    kind: str
    attempts: int
    created_at: datetime
    platform: str
    url: str
    secret: str


async def reset_in_flight(session: AsyncSession, now: datetime) -> int:
    """After a crash nobody knows whether an in-flight send arrived: send it again (at least
    once; clients de-duplicate by event id)."""
    res = await session.execute(update(D).where(D.c.state == IN_FLIGHT)
                                .values(state=PENDING, next_attempt_at=now, updated_at=now))
    return res.rowcount or 0


async def claim_due(session: AsyncSession, now: datetime, limit: int) -> list[Claimed]:
    """Up to `limit` due webhook deliveries, kills first, marked in_flight in one update.
    A kill waits while a publish of the same item to the same account is still in flight,
    so the kill is always the last word the client hears."""
    await cancel_pending_publishes(session, now)
    p = aliased(D)
    publish_in_flight = exists().where(
        p.c.item_id == D.c.item_id, p.c.account_id == D.c.account_id, p.c.kind == PUBLISH, p.c.state == IN_FLIGHT)
    stmt = (
        select(D.c.id, D.c.seq, D.c.item_id, D.c.version, D.c.account_id, D.c.kind, D.c.attempts, D.c.created_at,
               A.c.platform, A.c.webhook_url, A.c.webhook_secret)
        .join(A, A.c.id == D.c.account_id)
        .where(D.c.state == PENDING, D.c.mode == WEBHOOK, D.c.next_attempt_at <= now)
        .where(~and_(D.c.kind == KILL, publish_in_flight))
        .order_by(case((D.c.kind == KILL, 0), else_=1), D.c.next_attempt_at, D.c.seq)
        .limit(limit)
    )
    if _pg(session):
        stmt = stmt.with_for_update(of=D, skip_locked=True)
    rows = (await session.execute(stmt)).all()
    if not rows:
        return []
    await session.execute(
        update(D).where(D.c.id.in_([r.id for r in rows]))
        .values(state=IN_FLIGHT, attempts=D.c.attempts + 1, in_flight_at=now, updated_at=now)
    )
    return [Claimed(r.id, r.seq, r.item_id, r.version, r.account_id, r.kind, r.attempts + 1, r.created_at,
                    r.platform, r.webhook_url or "", r.webhook_secret or "") for r in rows]


async def next_due(session: AsyncSession) -> datetime | None:
    return (await session.execute(
        select(func.min(D.c.next_attempt_at)).where(D.c.state == PENDING, D.c.mode == WEBHOOK))).scalar()


async def mark_acknowledged(session: AsyncSession, ids: list[str], now: datetime) -> list:
    """Acknowledge what is still open; returns the rows that changed (id, account_id, item_id,
    version, kind), so each acknowledgement is announced once however often a client repeats it."""
    if not ids:
        return []
    res = await session.execute(
        update(D).where(D.c.id.in_(ids), D.c.state.in_(OPEN_STATES))
        .values(state=ACKNOWLEDGED, acknowledged_at=now, delivered_at=func.coalesce(D.c.delivered_at, now),
                last_error=None, updated_at=now)
        .returning(D.c.id, D.c.account_id, D.c.item_id, D.c.version, D.c.kind)
    )
    return list(res.all())


async def mark_delivered(session: AsyncSession, ids: list[str], now: datetime) -> None:
    """Stream deliveries handed to the client's connection."""
    if ids:
        await session.execute(
            update(D).where(D.c.id.in_(ids), D.c.state == PENDING)
            .values(state="delivered", delivered_at=now, attempts=D.c.attempts + 1, updated_at=now)
        )


async def reschedule(session: AsyncSession, retries: list[dict], now: datetime) -> None:
    """Back to pending with each row's own next try and error (one executemany)."""
    if retries:
        await session.execute(
            update(D).where(D.c.id == bindparam("b_id"), D.c.state == IN_FLIGHT)
            .values(state=PENDING, next_attempt_at=bindparam("b_next"), last_error=bindparam("b_error"),
                    updated_at=now),
            retries,
        )


async def mark_failed(session: AsyncSession, failures: list[dict], now: datetime, gone: bool = False) -> None:
    if failures:
        await session.execute(
            update(D).where(D.c.id == bindparam("b_id"), D.c.state.in_(OPEN_STATES))
            .values(state=FAILED, failed_at=now, last_error=bindparam("b_error"), gone=gone, updated_at=now),
            failures,
        )


async def endpoints_gone(session: AsyncSession, account_ids: list[str], now: datetime) -> list[str]:
    """Deactivate endpoints that answered 410 and fail what was still waiting for them;
    returns the items of the kills so failed (a gone client counts as confirmed)."""
    if not account_ids:
        return []
    await session.execute(update(A).where(A.c.id.in_(account_ids)).values(endpoint_active=False, gone_at=now))
    waiting = (await session.execute(
        select(D.c.id, D.c.item_id, D.c.kind).where(D.c.account_id.in_(account_ids), D.c.state == PENDING))).all()
    await mark_failed(session, [{"b_id": r.id, "b_error": "endpoint gone (410)"} for r in waiting], now, gone=True)
    return [r.item_id for r in waiting if r.kind == KILL]


# --- reads -----------------------------------------------------------------------------

async def publish_counts(session: AsyncSession, item_id: str, version: int) -> dict[str, int]:
    rows = (await session.execute(
        select(D.c.state, func.count()).where(D.c.item_id == item_id, D.c.version == version, D.c.kind == PUBLISH)
        .group_by(D.c.state))).all()
    return {state: n for state, n in rows}


async def kills(session: AsyncSession, item_id: str) -> list:
    return (await session.execute(
        select(D.c.account_id, D.c.state, D.c.attempts, D.c.last_error, D.c.gone)
        .where(D.c.item_id == item_id, D.c.kind == KILL).order_by(D.c.seq))).all()


async def stream_batch(session: AsyncSession, account_id: str, *, after: int | None, kills_only: bool,
                       limit: int) -> list:
    """A client's open deliveries in seq order; publishes of retracted items never again."""
    stmt = (
        select(D.c.id, D.c.seq, D.c.item_id, D.c.version, D.c.kind, D.c.created_at)
        .where(D.c.account_id == account_id, D.c.state.in_((PENDING, IN_FLIGHT, "delivered")))
        .order_by(D.c.seq).limit(limit)
    )
    if kills_only:
        stmt = stmt.where(D.c.kind == KILL)
    else:
        stmt = stmt.where(~and_(D.c.kind == PUBLISH, D.c.item_id.in_(select(Retraction.item_id))))
    if after is not None:
        stmt = stmt.where(D.c.seq > after)
    return (await session.execute(stmt)).all()

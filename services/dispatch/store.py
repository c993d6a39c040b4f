"""Set-based reads and writes of deliveries: one statement per batch, never one per row,
so an approval to 10,000 accounts is one insert and a worker round a handful of updates.

Every change of a delivery's state goes through `move` / `move_each`, which append the
transitions to `delivery_transitions` in one bulk insert in the same transaction."""
from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Iterable, Sequence

from sqlalchemy import (
    Integer, and_, bindparam, case, cast, event, exists, func, insert, literal, literal_column, null, or_, select, text,
    true, update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased
from sqlmodel.ext.asyncio.session import AsyncSession

from .domain import METRIC_FIELDS, Candidate, TargetRule, backoff, region_subtree
from .models import (
    ACKNOWLEDGED, CANCELLED, DELIVERED, FAILED, IN_FLIGHT, KILL, NATS, OPEN_STATES, PENDING, PUBLISH, STREAM, WEBHOOK,
    Account,
    Delivery, DeliveryTransition, ItemMetric, MetricReport, Publication, Region, Retraction,
)

D = Delivery.__table__
A = Account.__table__
T = DeliveryTransition.__table__
_SEQ_LOCK = 0x6469737061746368  # "dispatch": serialises the writers that allocate delivery seqs
CHUNK = 5000  # ids per statement: under SQLite's and asyncpg's bound-parameter limits


def chunks(items: Sequence, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- waking the worker and the streams ---------------------------------------------------

class Signal:
    """Wakes every waiter (the webhook worker, each open stream) once new deliveries commit,
    in this process and, through `replicas` (a core NATS message, see service.py), in the
    other replicas of dispatch: a kill committed by one reaches the streams held by another
    at once, not at its next poll."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.replicas: Callable[[], None] | None = None

    def notify(self) -> None:
        current, self._event = self._event, asyncio.Event()
        current.set()

    def committed(self) -> None:
        self.notify()
        if self.replicas is not None:
            self.replicas()

    def waiter(self) -> asyncio.Event:
        """Take this before reading, then wait on it: nothing committed in between is missed."""
        return self._event


def notify_after_commit(session: AsyncSession, signal: Signal) -> None:
    """Before the commit a woken reader would find nothing, so ring only after it."""
    event.listen(session.sync_session, "after_commit", lambda _s: signal.committed(), once=True)


# --- locks (PostgreSQL; SQLite serialises writers by itself) -------------------------------

def _pg(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


def _insert(session: AsyncSession, table):
    return pg_insert(table) if _pg(session) else sqlite_insert(table)


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


# --- state changes and their history ---------------------------------------------------------

async def record_transitions(session: AsyncSession, rows: Iterable[tuple], now: datetime) -> None:
    """Append (delivery id, from, to, error) rows to the history: one bulk insert."""
    values = [[i, f, t, (e or None) and e[:500]] for i, f, t, e in rows]
    for chunk in chunks(values):  # set-based, as insert_deliveries
        src = _json_rows(session, chunk)
        await session.execute(insert(T).from_select(
            ["delivery_id", "from_state", "to_state", "at", "error"],
            select(_element(session, src, 0), _element(session, src, 1), _element(session, src, 2),
                   literal(now, T.c.at.type), _element(session, src, 3))))


async def move(session: AsyncSession, where, from_states: Iterable[str], to_state: str, now: datetime, *,
               values: dict | None = None, error: str | None = None, returning: Sequence = ()) -> list:
    """UPDATE the deliveries matching `where` in one of `from_states` to `to_state` (one
    statement per from-state, RETURNING what moved, so the history knows each row's
    from-state exactly), then append their transitions in one insert. Returns the moved rows
    (id, then `returning`)."""
    moved = []
    for from_state in from_states:
        res = await session.execute(
            update(D).where(where, D.c.state == from_state)
            .values(state=to_state, updated_at=now, **(values or {}))
            .returning(D.c.id, *returning))
        moved.extend((from_state, r) for r in res.all())
    await record_transitions(session, [(r.id, f, to_state, error) for f, r in moved], now)
    return [r for _, r in moved]


async def move_ids(session: AsyncSession, ids: Sequence[str], from_states: Iterable[str], to_state: str,
                   now: datetime, **kw) -> list:
    """`move` for a list of ids, chunked; each from-state only for the ids not moved yet
    (an acknowledgement of 5,000 pending NATS deliveries is one UPDATE, not three)."""
    moved = []
    ids = list(dict.fromkeys(ids))
    for chunk in chunks(ids):
        left = chunk
        for from_state in from_states:
            if not left:
                break
            rows = await move(session, D.c.id.in_(left), [from_state], to_state, now, **kw)
            moved.extend(rows)
            if rows:
                done = {r.id for r in rows}
                left = [i for i in left if i not in done]
    return moved


async def move_each(session: AsyncSession, rows: list[dict], from_states: Sequence[str], to_state: str,
                    now: datetime, values: dict, error_key: str = "b_error", where=None) -> list[str]:
    """Like `move`, with values of each row's own (bindparams `b_…`; `b_id` the delivery):
    the rows still in a from-state are read (and locked on PostgreSQL), updated in one
    executemany, and their transitions appended. Returns the ids that moved."""
    if not rows:
        return []
    by_id = {r["b_id"]: r for r in rows}
    current: dict[str, str] = {}
    for chunk in chunks(list(by_id)):
        stmt = select(D.c.id, D.c.state).where(D.c.id.in_(chunk), D.c.state.in_(list(from_states)))
        if where is not None:
            stmt = stmt.where(where)
        if _pg(session):
            stmt = stmt.with_for_update()
        current.update({r.id: r.state for r in (await session.execute(stmt)).all()})
    todo = [by_id[i] for i in current]
    if todo:
        await session.execute(
            update(D).where(D.c.id == bindparam("b_id")).values(state=to_state, updated_at=now, **values), todo)
    await record_transitions(session, [(i, current[i], to_state, by_id[i].get(error_key)) for i in current], now)
    return list(current)


# --- targeting and creation ----------------------------------------------------------------

async def candidates(session: AsyncSession, rule: TargetRule) -> list[Candidate]:
    """Every account the rule selects, whatever its state (the partition decides who gets it)."""
    if rule.empty:
        return []
    stmt = select(A.c.id, A.c.delivery_mode, A.c.platform, A.c.status, A.c.endpoint_active)
    if rule.regions:
        # By the regions dispatch knows, and by the path the account's own event carried: an
        # account of a city whose region event is still on its way is reached all the same.
        parents = dict((await session.execute(select(Region.id, Region.parent_id))).all())
        stmt = stmt.where(or_(A.c.region_id.in_(region_subtree(rule.regions, parents)),
                              *(A.c.region_path.contains(f"/{r}/", autoescape=True) for r in sorted(rule.regions))))
    if rule.platforms:
        stmt = stmt.where(A.c.platform.in_(rule.platforms))
    if rule.accounts:
        stmt = stmt.where(A.c.id.in_(rule.accounts))
    if rule.unit_kinds:
        stmt = stmt.where(A.c.unit_kind.in_(rule.unit_kinds))
    return [Candidate(r.id, r.delivery_mode, r.platform, r.status, r.endpoint_active)
            for r in (await session.execute(stmt.order_by(A.c.id))).all()]


async def known_accounts(session: AsyncSession, ids: Iterable[str]) -> set[str]:
    ids = list(ids)
    found: set[str] = set()
    for chunk in chunks(ids):
        found.update((await session.execute(select(A.c.id).where(A.c.id.in_(chunk)))).scalars().all())
    return found


def got_the_item():
    """A publish that reached, or may have reached, its client: sent at least once (a
    timed-out send may have arrived) or in a state past pending."""
    return or_(D.c.attempts > 0, D.c.state.in_((IN_FLIGHT, DELIVERED, ACKNOWLEDGED)))


async def kill_targets(session: AsyncSession, item_id: str) -> list[tuple[str, str, bool]]:
    """(account, mode, endpoint active) of every account that got, or was getting, any version
    of the item. Publishes never sent (cancelled while scheduled or pending) need no kill."""
    got = select(D.c.account_id).where(D.c.item_id == item_id, D.c.kind == PUBLISH, got_the_item())
    stmt = select(A.c.id, A.c.delivery_mode, A.c.endpoint_active).where(A.c.id.in_(got)).order_by(A.c.id)
    return [tuple(r) for r in (await session.execute(stmt)).all()]


async def insert_deliveries(session: AsyncSession, item_id: str, version: int, kind: str, rows: list[dict],
                            now: datetime, due: datetime, nats_resend_at: datetime | None = None) -> list:
    """Create the deliveries of one item version and kind: `rows` hold what differs per
    account (id, account_id, mode, state, last_error, gone). A row that exists already (same
    item, version, account, kind) is skipped. Each created row's first state goes into the
    history. Returns the created rows (id, account_id, mode, state, last_error).

    A pending `nats` delivery due now is sent right after this commits (fanout.py), so it is
    created as sent once (attempts 1: a kill must reach whoever may have got the publish) and
    due again at `nats_resend_at`, when it goes out again unless acknowledged.

    Set-based: the rows travel as one JSON parameter per chunk, which the database unpacks
    (json_each / jsonb_array_elements), and what is the same for all (item, kind, times) is
    bound once. An executemany spent most of a 10,000-target push or kill in per-row
    parameter processing (~0.7 s of CPU on SQLite), before any delivery could go out."""
    if not rows:
        return []
    created = []
    now_at, due_at = (literal(value, D.c.created_at.type) for value in (now, due))  # bound once, typed
    sent_now = nats_resend_at is not None and due <= now
    resend_at = literal(nats_resend_at or due, D.c.created_at.type)
    for chunk in chunks(rows):
        src = _json_rows(session, [[r["id"], r["account_id"], r["mode"], r["state"], r["last_error"],
                                    int(r["gone"])] for r in chunk])
        state, mode = _element(session, src, 3), _element(session, src, 2)
        nats_sent = and_(mode == NATS, state == PENDING) if sent_now else literal(False)
        select_rows = select(
            _element(session, src, 0), literal(item_id), literal(version, D.c.version.type),
            _element(session, src, 1), literal(kind), mode, state, case((nats_sent, 1), else_=0),
            _element(session, src, 4), cast(_element(session, src, 5), Integer) == 1,
            case((nats_sent, resend_at), else_=due_at), now_at, now_at, case((state == FAILED, now_at), else_=null()),
        ).where(true())  # SQLite needs a WHERE before ON CONFLICT in INSERT … SELECT
        ins = _insert(session, D).from_select(
            ["id", "item_id", "version", "account_id", "kind", "mode", "state", "attempts", "last_error", "gone",
             "next_attempt_at", "created_at", "updated_at", "failed_at"], select_rows)
        ins = ins.on_conflict_do_nothing(index_elements=["item_id", "version", "account_id", "kind"])
        created.extend((await session.execute(
            ins.returning(D.c.id, D.c.account_id, D.c.mode, D.c.state, D.c.last_error))).all())
    await record_transitions(session, [(r.id, None, r.state, r.last_error) for r in created], now)
    return created


def _json_rows(session: AsyncSession, rows: list[list]):
    """A FROM of one JSON array per row, from one bound parameter."""
    payload = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
    if _pg(session):
        return func.jsonb_array_elements(cast(literal(payload), JSONB)).table_valued("value")
    return func.json_each(literal(payload)).table_valued("value")


def _element(session: AsyncSession, src, index: int):
    """The index-th element of the row's JSON array, as text (or NULL)."""
    if _pg(session):
        return src.c.value.op("->>")(literal_column(str(index)))
    return func.json_extract(src.c.value, f"$[{index}]")


async def cancel_pending_publishes(session: AsyncSession, now: datetime, item_id: str,
                                   below_version: int | None = None, error: str = "retracted") -> int:
    """Publishes of the item not sent yet (scheduled or waiting): a kill, or a newer version, wins."""
    where = and_(D.c.kind == PUBLISH, D.c.item_id == item_id)
    if below_version is not None:
        where = and_(where, D.c.version < below_version)
    return len(await move(session, where, [PENDING], CANCELLED, now, values={"cancelled_at": now}, error=error))


async def cancel_retracted(session: AsyncSession, ids: list[str], now: datetime) -> int:
    """Of these deliveries, the pending publishes of items retracted meanwhile (a send that
    was in flight at the retraction and came back for a retry)."""
    moved = 0
    for chunk in chunks(ids):
        where = and_(D.c.id.in_(chunk), D.c.kind == PUBLISH, D.c.item_id.in_(select(Retraction.item_id)))
        moved += len(await move(session, where, [PENDING], CANCELLED, now, values={"cancelled_at": now},
                                error="retracted"))
    return moved


# --- the webhook worker ------------------------------------------------------------------

@dataclass(frozen=True)
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
    endpoint: str


LEASE_EXPIRED = "lease expired: the process that claimed it stopped before recording the outcome"


async def take_back_expired(session: AsyncSession, now: datetime, owner: str) -> int:
    """Webhook sends whose claiming process let its lease run out (it crashed, or hung past
    the lease) go back to pending and out again: nobody knows whether they arrived (at least
    once; clients de-duplicate by event id). A live replica renews its leases, so its sends
    are never taken. Rows without a lease (claimed before leases existed) count as expired.
    Two replicas doing this at once move each row once: the UPDATE re-checks the state.
    Never this process's own (`owner`): it knows what it holds and renews it."""
    expired = and_(or_(D.c.lease_until.is_(None), D.c.lease_until < now),
                   or_(D.c.lease_owner.is_(None), D.c.lease_owner != owner))
    return len(await move(session, and_(D.c.mode == WEBHOOK, expired), [IN_FLIGHT], PENDING, now,
                          values={"next_attempt_at": now, "lease_until": None, "lease_owner": None},
                          error=LEASE_EXPIRED))


async def renew_leases(session: AsyncSession, ids: Sequence[str], owner: str, until: datetime) -> int:
    """Extend the leases this process still holds (its sends in hand, its outcomes not yet
    recorded); a leased kill's next try moves with its lease."""
    renewed = 0
    for chunk in chunks(list(ids)):
        res = await session.execute(
            update(D).where(D.c.id.in_(chunk), D.c.state.in_((IN_FLIGHT, PENDING)), D.c.lease_owner == owner)
            .values(lease_until=until,
                    next_attempt_at=case((D.c.state == PENDING, until), else_=D.c.next_attempt_at)))
        renewed += res.rowcount or 0
    return renewed


def _not_retracted_publish():
    return ~and_(D.c.kind == PUBLISH, D.c.item_id.in_(select(Retraction.item_id)))


async def due_candidates(session: AsyncSession, now: datetime, limit: int, blocked: Iterable[str] = ()) -> list[Claimed]:
    """Up to `limit` due webhook deliveries, kills first, of endpoints not `blocked` (breaker
    open, or full). A kill waits while a publish of the same item to the same account is
    still in flight, so the kill is always the last word the client hears; a publish of a
    retracted item is never taken. Locked (SKIP LOCKED) on PostgreSQL until the claim commits.

    Kills and publishes are two queries, each walking the due index in order and stopping at
    the limit: one query ordered by kind first would sort every due row each round."""
    p = aliased(D)
    publish_in_flight = exists().where(
        p.c.item_id == D.c.item_id, p.c.account_id == D.c.account_id, p.c.kind == PUBLISH, p.c.state == IN_FLIGHT)
    blocked = list(blocked)
    found: list[Claimed] = []
    for kind, extra in ((KILL, ~publish_in_flight), (PUBLISH, _not_retracted_publish())):
        if len(found) >= limit:
            break
        stmt = (
            select(D.c.id, D.c.seq, D.c.item_id, D.c.version, D.c.account_id, D.c.kind, D.c.attempts, D.c.created_at,
                   A.c.platform, A.c.webhook_url, A.c.webhook_secret, A.c.endpoint_key)
            .join(A, A.c.id == D.c.account_id)
            .where(D.c.state == PENDING, D.c.mode == WEBHOOK, D.c.next_attempt_at <= now, D.c.kind == kind, extra)
            .order_by(D.c.next_attempt_at, D.c.seq)
            .limit(limit - len(found))
        )
        if blocked:
            stmt = stmt.where(A.c.endpoint_key.notin_(blocked))
        if _pg(session):
            stmt = stmt.with_for_update(of=D, skip_locked=True)
        found += [Claimed(r.id, r.seq, r.item_id, r.version, r.account_id, r.kind, r.attempts, r.created_at,
                          r.platform, r.webhook_url or "", r.webhook_secret or "", r.endpoint_key or "")
                  for r in (await session.execute(stmt)).all()]
    return found


async def claim(session: AsyncSession, chosen: list[Claimed], now: datetime, owner: str,
                lease_until: datetime) -> list[Claimed]:
    """Take the chosen deliveries under this process's lease; answers those still pending,
    with their attempt counted. A publish goes in flight (a transition). A kill stays
    pending, only leased, its next try moved to the lease's end: a kill must be fast and
    always wins, so it spares the in-flight write and its history row; should this process
    die, the kill falls due again by itself when the lease ends."""
    if not chosen:
        return []
    publishes = [c.id for c in chosen if c.kind != KILL]
    kills = [c.id for c in chosen if c.kind == KILL]
    lease = {"lease_until": lease_until, "lease_owner": owner}
    moved = {r.id for r in await move_ids(session, publishes, [PENDING], IN_FLIGHT, now,
                                          values={"attempts": D.c.attempts + 1, "in_flight_at": now, **lease})}
    for chunk in chunks(kills):
        res = await session.execute(
            # still due: not leased by another process meanwhile (its lease moved the next try)
            update(D).where(D.c.id.in_(chunk), D.c.state == PENDING, D.c.next_attempt_at <= now)
            .values(attempts=D.c.attempts + 1, in_flight_at=now, next_attempt_at=lease_until, updated_at=now,
                    **lease)
            .returning(D.c.id))
        moved.update(res.scalars().all())
    return [replace(c, attempts=c.attempts + 1) for c in chosen if c.id in moved]


async def next_due(session: AsyncSession, blocked: Iterable[str] = ()) -> datetime | None:
    stmt = select(func.min(D.c.next_attempt_at)).where(D.c.state == PENDING, D.c.mode == WEBHOOK)
    blocked = list(blocked)
    if blocked:
        stmt = stmt.where(D.c.account_id.in_(select(A.c.id).where(A.c.endpoint_key.notin_(blocked))))
    return (await session.execute(stmt)).scalar()


async def defer_endpoint(session: AsyncSession, endpoint: str, until: datetime, now: datetime, error: str) -> int:
    """The endpoint's breaker opened: its waiting deliveries move to the end of the cool-down,
    untried (no attempt counted, no state change)."""
    res = await session.execute(
        update(D).where(D.c.state == PENDING, D.c.mode == WEBHOOK, D.c.next_attempt_at < until,
                        D.c.account_id.in_(select(A.c.id).where(A.c.endpoint_key == endpoint)))
        .values(next_attempt_at=until, last_error=error, updated_at=now))
    return res.rowcount or 0


ACK_RETURNING = (D.c.account_id, D.c.item_id, D.c.version, D.c.kind)


async def acknowledge(session: AsyncSession, ids: list[str], now: datetime,
                      from_states: Sequence[str] = (PENDING, IN_FLIGHT, DELIVERED)) -> list:
    """Acknowledge what is still open (a NATS or webhook kill and a NATS publish wait pending,
    a stream publish delivered). The from-states in the order a delivery moves through them:
    one that moves on between two statements (another replica recording its hand-over) is
    caught by the next; returns the rows that changed (id, account_id, item_id,
    version, kind), so each acknowledgement is announced once however often a client repeats it."""
    if not ids:
        return []
    return await move_ids(session, ids, from_states, ACKNOWLEDGED, now, returning=ACK_RETURNING,
                          values={"acknowledged_at": now, "delivered_at": func.coalesce(D.c.delivered_at, now),
                                  "last_error": None})


def leased_by(owner: str):
    """Still under this process's lease: a send whose lease ran out and was taken back (and
    perhaps claimed again elsewhere) is no longer this process's to retry or fail."""
    return D.c.lease_owner == owner


SENT_STATES = (IN_FLIGHT, PENDING)  # a webhook send's delivery: a publish in flight, a kill pending under lease


async def reschedule(session: AsyncSession, retries: list[dict], now: datetime, owner: str | None = None) -> list[str]:
    """Back to pending with each row's own next try and error (one executemany)."""
    return await move_each(session, retries, SENT_STATES, PENDING, now,
                           {"next_attempt_at": bindparam("b_next"), "last_error": bindparam("b_error"),
                            "lease_until": None, "lease_owner": None},
                           where=leased_by(owner) if owner else None)


async def mark_failed(session: AsyncSession, failures: list[dict], now: datetime, gone: bool = False,
                      from_states: Sequence[str] = OPEN_STATES, owner: str | None = None) -> list[str]:
    return await move_each(session, failures, from_states, FAILED, now,
                           {"failed_at": now, "last_error": bindparam("b_error"), "gone": gone},
                           where=leased_by(owner) if owner else None)


async def endpoints_gone(session: AsyncSession, account_ids: list[str], now: datetime, error: str) -> list[str]:
    """Deactivate endpoints that answered 410 and fail what was still waiting for them;
    returns the items of the kills so failed (a gone client counts as confirmed)."""
    if not account_ids:
        return []
    await session.execute(update(A).where(A.c.id.in_(account_ids)).values(endpoint_active=False, gone_at=now))
    moved = await move(session, D.c.account_id.in_(account_ids), [PENDING], FAILED, now, error=error,
                       values={"failed_at": now, "last_error": error, "gone": True},
                       returning=(D.c.item_id, D.c.kind))
    return [r.item_id for r in moved if r.kind == KILL]


# --- the streams -------------------------------------------------------------------------

STREAM_COLUMNS = (D.c.id, D.c.seq, D.c.item_id, D.c.version, D.c.kind, D.c.state, D.c.created_at)


async def stream_kills(session: AsyncSession, account_id: str, limit: int) -> list:
    """Every kill the client has not acknowledged: what a reconnecting client gets first."""
    return (await session.execute(
        select(*STREAM_COLUMNS).where(D.c.account_id == account_id, D.c.kind == KILL, D.c.state.in_(OPEN_STATES))
        .order_by(D.c.seq).limit(limit))).all()


async def stream_batch(session: AsyncSession, account_id: str, *, after: int, now: datetime, limit: int) -> list:
    """A client's open deliveries in seq order: those after its cursor, and those never
    written to a connection whatever their seq (an embargo released since, a send a dropped
    connection left in flight). Never a publish before its time, never one of a retracted item."""
    stmt = (
        select(*STREAM_COLUMNS)
        .where(D.c.account_id == account_id, D.c.state.in_(OPEN_STATES),
               or_(D.c.seq > after, D.c.state.in_((PENDING, IN_FLIGHT))))
        .where(or_(D.c.kind == KILL, D.c.next_attempt_at <= now))
        .where(_not_retracted_publish())
        .order_by(D.c.seq).limit(limit)
    )
    return (await session.execute(stmt)).all()


async def platforms(session: AsyncSession, account_ids: Sequence[str]) -> dict[str, str]:
    return dict((await session.execute(select(A.c.id, A.c.platform).where(A.c.id.in_(list(account_ids))))).all())


async def receiving_states(session: AsyncSession, account_ids: Sequence[str]) -> dict[str, bool]:
    """Of the accounts dispatch knows among `account_ids`: whether each still receives on a
    stream (active, delivery mode stream). Unknown accounts are absent."""
    rows = (await session.execute(select(A.c.id, A.c.status, A.c.delivery_mode).where(
        A.c.id.in_(list(account_ids))))).all()
    return {r.id: r.status == "active" and r.delivery_mode == "stream" for r in rows}


async def stream_kills_many(session: AsyncSession, account_ids: Sequence[str]) -> list:
    """`stream_kills` of many clients in one query (account_id first)."""
    return (await session.execute(
        select(D.c.account_id, *STREAM_COLUMNS)
        .where(D.c.account_id.in_(list(account_ids)), D.c.kind == KILL, D.c.state.in_(OPEN_STATES))
        .order_by(D.c.seq))).all()


async def stream_batch_many(session: AsyncSession, account_ids: Sequence[str], *, after: int, now: datetime,
                            limit: int) -> list:
    """`stream_batch` of many clients in one query: the first `limit` rows of each (by seq)
    after the lowest of their cursors (account_id first); each connection drops those at or
    below its own cursor that it has been sent already. A client with `limit` rows here may
    have more, and reads on by itself."""
    inner = (
        select(D.c.account_id, *STREAM_COLUMNS,
               func.row_number().over(partition_by=D.c.account_id, order_by=D.c.seq).label("rn"))
        .where(D.c.account_id.in_(list(account_ids)), D.c.state.in_(OPEN_STATES),
               or_(D.c.seq > after, D.c.state.in_((PENDING, IN_FLIGHT))))
        .where(or_(D.c.kind == KILL, D.c.next_attempt_at <= now))
        .where(_not_retracted_publish())
        .subquery()
    )
    cols = [inner.c.account_id, *(inner.c[c.name] for c in STREAM_COLUMNS)]
    return (await session.execute(select(*cols).where(inner.c.rn <= limit).order_by(inner.c.seq))).all()


async def stream_new(session: AsyncSession, *, after: int, now: datetime, limit: int) -> list:
    """Every client's stream deliveries committed after `after` (in seq order), for the hub that
    serves every open stream of the process: pending ones that are due go to their connection."""
    stmt = (
        select(D.c.account_id, *STREAM_COLUMNS, D.c.next_attempt_at)
        .where(D.c.seq > after, D.c.mode == STREAM)
        .order_by(D.c.seq).limit(limit)
    )
    return (await session.execute(stmt)).all()


async def stream_released(session: AsyncSession, *, since: datetime, now: datetime, upto_seq: int,
                          limit: int) -> list:
    """Embargoed stream publishes whose time came in (since, now]: the hub read them before they
    were due."""
    stmt = (
        select(D.c.account_id, *STREAM_COLUMNS, D.c.next_attempt_at)
        .where(D.c.mode == STREAM, D.c.kind == PUBLISH, D.c.state == PENDING, D.c.seq <= upto_seq,
               D.c.next_attempt_at > since, D.c.next_attempt_at <= now)
        .where(_not_retracted_publish())
        .order_by(D.c.seq).limit(limit)
    )
    return (await session.execute(stmt)).all()


async def last_seq(session: AsyncSession) -> int:
    return (await session.execute(select(func.max(D.c.seq)))).scalar() or 0


async def stream_claim(session: AsyncSession, by_state: dict[str, list[str]], now: datetime) -> set[str]:
    """Hand deliveries to a connection (→ in_flight, attempt counted), grouped by the state
    they were read in; answers those that moved (a publish cancelled meanwhile does not)."""
    moved: set[str] = set()
    for state, ids in by_state.items():
        if ids:
            rows = await move_ids(session, ids, [state], IN_FLIGHT, now,
                                  values={"attempts": D.c.attempts + 1, "in_flight_at": now})
            moved.update(r.id for r in rows)
    return moved


async def mark_delivered(session: AsyncSession, ids: list[str], now: datetime) -> None:
    """Stream deliveries written to the client's connection (publishes handed over first,
    kills straight from pending)."""
    if ids:
        await move_ids(session, ids, [PENDING, IN_FLIGHT], DELIVERED, now,
                       values={"delivered_at": now,  # a kill's one attempt; a publish counted it at hand-over
                               "attempts": case((D.c.state == PENDING, D.c.attempts + 1), else_=D.c.attempts)})


# --- delivery mode nats (fanout.py) ----------------------------------------------------------

NATS_COLUMNS = (D.c.id, D.c.account_id, D.c.item_id, D.c.version, D.c.kind, D.c.created_at)


async def nats_claim_due(session: AsyncSession, now: datetime, limit: int, base_s: float, cap_s: float,
                         due_by: datetime | None = None) -> list:
    """Up to `limit` pending nats deliveries due (again) by `due_by` (default now), kills
    first: each one's next try moved on by its backoff and the attempt counted, in this
    transaction; answers those this process claimed (another replica's claim, or an
    acknowledgement, may have taken one)."""
    due_by = due_by or now
    found = []
    for kind, extra in ((KILL, true()), (PUBLISH, _not_retracted_publish())):
        if len(found) >= limit:
            break
        stmt = (select(D.c.id, D.c.attempts)
                .where(D.c.state == PENDING, D.c.mode == NATS, D.c.next_attempt_at <= due_by, D.c.kind == kind, extra)
                .order_by(D.c.next_attempt_at, D.c.seq).limit(limit - len(found)))
        if _pg(session):
            stmt = stmt.with_for_update(of=D, skip_locked=True)
        found += (await session.execute(stmt)).all()
    by_attempts: dict[int, list[str]] = {}
    for r in found:
        by_attempts.setdefault(r.attempts, []).append(r.id)
    claimed = []
    for attempts, ids in by_attempts.items():
        # Jitter per group, so clients that missed a kill together do not all come back together.
        next_at = now + timedelta(seconds=backoff(attempts + 1, base_s, cap_s))
        for chunk in chunks(ids):
            claimed += (await session.execute(
                update(D).where(D.c.id.in_(chunk), D.c.state == PENDING, D.c.next_attempt_at <= due_by)
                .values(attempts=D.c.attempts + 1, next_attempt_at=next_at, updated_at=now)
                .returning(*NATS_COLUMNS))).all()
    kills = [r for r in claimed if r.kind == KILL]
    return kills + [r for r in claimed if r.kind != KILL]


async def nats_next_due(session: AsyncSession) -> datetime | None:
    """When the next pending nats delivery falls due (one read of the due index)."""
    return (await session.execute(select(func.min(D.c.next_attempt_at))
                                  .where(D.c.state == PENDING, D.c.mode == NATS))).scalar()


async def nats_open(session: AsyncSession, account_ids: Sequence[str], now: datetime) -> list:
    """What clients saying hello get, in seq order: each one's unacknowledged kills and the
    publishes that have gone out (or are due) and are not acknowledged, never one of a
    retracted item, never an embargoed one before its time."""
    stmt = (select(*NATS_COLUMNS)
            .where(D.c.account_id.in_(list(account_ids)), D.c.mode == NATS, D.c.state == PENDING)
            .where(or_(D.c.kind == KILL, and_(or_(D.c.attempts > 0, D.c.next_attempt_at <= now),
                                              _not_retracted_publish())))
            .order_by(D.c.seq))
    return (await session.execute(stmt)).all()


# --- reads -----------------------------------------------------------------------------

async def publish_counts(session: AsyncSession, item_id: str, version: int) -> dict[str, int]:
    rows = (await session.execute(
        select(D.c.state, func.count()).where(D.c.item_id == item_id, D.c.version == version, D.c.kind == PUBLISH)
        .group_by(D.c.state))).all()
    return {state: n for state, n in rows}


async def publish_failures(session: AsyncSession, item_id: str, version: int, limit: int = 50) -> dict[str, int]:
    """Failed publishes of the version per reason (render failures, endpoint gone, …)."""
    reason = func.coalesce(D.c.last_error, "")
    rows = (await session.execute(
        select(reason, func.count()).where(D.c.item_id == item_id, D.c.version == version,
                                           D.c.kind == PUBLISH, D.c.state == FAILED)
        .group_by(reason).order_by(func.count().desc()).limit(limit))).all()
    return {r or "unknown": n for r, n in rows}


def _confirmed():
    return or_(D.c.state == ACKNOWLEDGED, and_(D.c.state == FAILED, D.c.gone.is_(True)))


async def kill_stragglers(session: AsyncSession, item_id: str, *, after: int, limit: int) -> list:
    """A page (by seq) of the item's kills not yet confirmed."""
    return (await session.execute(
        select(D.c.id, D.c.seq, D.c.account_id, D.c.state, D.c.attempts, D.c.last_error, D.c.next_attempt_at)
        .where(D.c.item_id == item_id, D.c.kind == KILL, D.c.seq > after, ~_confirmed())
        .order_by(D.c.seq).limit(limit))).all()


async def kills_gone(session: AsyncSession, item_id: str, limit: int) -> list[str]:
    """Accounts whose kill of the item was confirmed by their endpoint being gone (410)."""
    return list((await session.execute(
        select(D.c.account_id).where(D.c.item_id == item_id, D.c.kind == KILL, D.c.state == FAILED,
                                     D.c.gone.is_(True)).order_by(D.c.seq).limit(limit))).scalars().all())


async def kills_outstanding(session: AsyncSession, item_id: str) -> bool:
    """Whether any kill of the item is still unconfirmed: stops at the first one found, so
    it stays cheap while thousands are (each acknowledgement batch asks)."""
    return (await session.execute(
        select(D.c.id).where(D.c.item_id == item_id, D.c.kind == KILL, ~_confirmed()).limit(1))).first() is not None


async def kill_progress(session: AsyncSession, item_ids: list[str]) -> dict[str, tuple[int, int]]:
    """Item → (kills, confirmed: acknowledged or the client gone), in one grouped query."""
    confirmed = func.sum(case((_confirmed(), 1), else_=0))
    rows = (await session.execute(
        select(D.c.item_id, func.count(), confirmed).where(D.c.item_id.in_(item_ids), D.c.kind == KILL)
        .group_by(D.c.item_id))).all()
    progress = {i: (0, 0) for i in item_ids}
    progress.update({r[0]: (int(r[1]), int(r[2] or 0)) for r in rows})
    return progress


async def history(session: AsyncSession, delivery_id: str) -> list:
    return (await session.execute(
        select(T.c.from_state, T.c.to_state, T.c.at, T.c.error).where(T.c.delivery_id == delivery_id)
        .order_by(T.c.seq))).all()


async def list_deliveries(session: AsyncSession, *, limit: int, cursor: str | None, state: str | None,
                          item_id: str | None, account_id: str | None, kind: str | None, reach) -> list:
    """A page of deliveries by id; `reach` limits them to items of units the caller reaches."""
    stmt = select(D).order_by(D.c.id).limit(limit + 1)
    for column, value in ((D.c.state, state), (D.c.item_id, item_id), (D.c.account_id, account_id),
                          (D.c.kind, kind)):
        if value:
            stmt = stmt.where(column == value)
    if cursor:
        stmt = stmt.where(D.c.id > cursor)
    if reach is not None:
        stmt = stmt.where(D.c.item_id.in_(select(Publication.item_id).where(reach)))
    return (await session.execute(stmt)).all()


async def get_delivery(session: AsyncSession, delivery_id: str, lock: bool = False):
    stmt = select(D).where(D.c.id == delivery_id)
    if lock and _pg(session):
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).first()


async def owners(session: AsyncSession, ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """Delivery → (account, item, kind), for checking whose acknowledgements these are."""
    found: dict[str, tuple[str, str, str]] = {}
    for chunk in chunks(list(dict.fromkeys(ids))):
        rows = (await session.execute(select(D.c.id, D.c.account_id, D.c.item_id, D.c.kind)
                                      .where(D.c.id.in_(chunk)))).all()
        found.update({r.id: (r.account_id, r.item_id, r.kind) for r in rows})
    return found


# --- client metrics ------------------------------------------------------------------------

IM = ItemMetric.__table__
MR = MetricReport.__table__


async def first_report(session: AsyncSession, account_id: str, report_id: str, now: datetime) -> bool:
    """Record the report id; False when the client had sent it before."""
    row = (await session.execute(
        _insert(session, MR).values(account_id=account_id, report_id=report_id, received_at=now)
        .on_conflict_do_nothing(index_elements=["account_id", "report_id"]).returning(MR.c.report_id))).first()
    return row is not None


async def items_received(session: AsyncSession, account_id: str, item_ids: list[str]) -> set[str]:
    """Of these items, those a publish of reached (or may have reached) the account."""
    return set((await session.execute(
        select(D.c.item_id).where(D.c.account_id == account_id, D.c.kind == PUBLISH, D.c.item_id.in_(item_ids),
                                  got_the_item()).distinct())).scalars().all())


async def add_metrics(session: AsyncSession, rows: list[dict]) -> None:
    """Add increments per (item, account, day): to the totals and to what the bus has yet to hear."""
    ins = _insert(session, IM).values(rows)
    adds = {f: IM.c[f] + ins.excluded[f] for f in METRIC_FIELDS}
    adds.update({f"unsent_{f}": IM.c[f"unsent_{f}"] + ins.excluded[f"unsent_{f}"] for f in METRIC_FIELDS})
    await session.execute(ins.on_conflict_do_update(
        index_elements=["item_id", "account_id", "day"],
        set_={**adds, "unsent": IM.c.unsent | ins.excluded.unsent, "updated_at": ins.excluded.updated_at}))


async def unsent_metrics(session: AsyncSession, limit: int) -> list:
    stmt = select(IM).where(IM.c.unsent.is_(True)).order_by(IM.c.item_id, IM.c.account_id, IM.c.day).limit(limit)
    if _pg(session):
        stmt = stmt.with_for_update(skip_locked=True)
    return (await session.execute(stmt)).all()


async def metrics_sent(session: AsyncSession, rows) -> None:
    """Take the announced amounts off (one executemany); a report added meanwhile keeps its part."""
    left = sum((IM.c[f"unsent_{f}"] - bindparam(f"b_{f}") for f in METRIC_FIELDS[1:]),
               IM.c["unsent_reads"] - bindparam("b_reads"))
    await session.execute(
        update(IM).where(IM.c.item_id == bindparam("b_item"), IM.c.account_id == bindparam("b_account"),
                         IM.c.day == bindparam("b_day"))
        .values(**{f"unsent_{f}": IM.c[f"unsent_{f}"] - bindparam(f"b_{f}") for f in METRIC_FIELDS},
                unsent=case((left > 0, True), else_=False)),
        [{"b_item": r.item_id, "b_account": r.account_id, "b_day": r.day,
          **{f"b_{f}": getattr(r, f"unsent_{f}") for f in METRIC_FIELDS}} for r in rows])


async def item_units(session: AsyncSession, item_ids) -> dict[str, str]:
    return dict((await session.execute(select(Publication.item_id, Publication.unit_id)
                                       .where(Publication.item_id.in_(list(item_ids))))).all())


async def metrics_by_day(session: AsyncSession, item_id: str) -> list:
    sums = [func.coalesce(func.sum(IM.c[f]), 0).label(f) for f in METRIC_FIELDS]
    return (await session.execute(select(IM.c.day, IM.c.platform, *sums).where(IM.c.item_id == item_id)
                                  .group_by(IM.c.day, IM.c.platform).order_by(IM.c.day, IM.c.platform))).all()


async def trace_parents(session: AsyncSession, claimed: Sequence[Claimed]) -> dict[tuple[str, str], str]:
    """(item id, kind) → the traceparent of the push (publishes) or retraction (kills) they
    belong to, for the claims' spans (read only when tracing is on)."""
    found: dict[tuple[str, str], str] = {}
    for kind, model in ((PUBLISH, Publication), (KILL, Retraction)):
        items = {c.item_id for c in claimed if c.kind == kind}
        if items:
            rows = await session.execute(select(model.item_id, model.trace_parent)
                                         .where(model.item_id.in_(items), model.trace_parent.is_not(None)))
            found.update({(item_id, kind): parent for item_id, parent in rows.all()})
    return found

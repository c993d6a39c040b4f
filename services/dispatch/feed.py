"""The client feed: what a stream client (gRPC Subscribe / Connect, REST SSE) receives, and
its acknowledgements. Writes of all connections (handed over, written, acknowledged) go
through the process's Coalescer (batcher.py): one transaction per few milliseconds,
whatever the number of clients."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import AsyncIterator

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import iso, utcnow
from govmedia_kit.errors import AppError, forbidden, invalid
from govmedia_kit.runtime import Runtime

from . import store
from .batcher import Coalescer, Op
from .domain import RenderError
from .models import EVENT_TYPES, IN_FLIGHT, KILL, Account, FeedEvent
from .usecases import announce_acknowledged, complete_if_done, contents, signal

log = logging.getLogger(__name__)
CLAIM, DELIVERED, ACK = "claim", "delivered", "ack"


def writes(rt: Runtime) -> Coalescer:
    return rt.state["writes"]


def client_account(who: Principal) -> str:
    if not who.has(CLIENT_ROLE) or not who.account_id:
        raise forbidden("client_required", "仅矩阵客户端（客户端凭据）可以使用此接口")
    return who.account_id


# --- the feed ---------------------------------------------------------------------------

async def open_feed(rt: Runtime, who: Principal, cursor: int, idle_beat: float | None = None,
                    lifetime: float | None = None) -> AsyncIterator[list[FeedEvent]]:
    """Check the caller before anything is streamed, then hand back its feed (ending after
    `lifetime` seconds, if given, once what was sent is recorded)."""
    account_id = client_account(who)
    if cursor < 0:
        raise invalid("invalid_cursor", "游标不能为负数", {"cursor": cursor})
    until = time.monotonic() + lifetime if lifetime else None
    return _feed(rt, account_id, await _platform(rt, account_id), cursor, idle_beat, until)


async def _feed(rt: Runtime, account_id: str, platform: str, cursor: int, idle_beat: float | None,
                until: float | None) -> AsyncIterator[list[FeedEvent]]:
    """The events of one client: every open kill first, then what follows `cursor` in seq
    order (and what was never written to a connection: embargoes released since, sends a
    dropped connection left in flight), then new ones as they commit or fall due. Yields
    batches (an empty one after `idle_beat` seconds of quiet, for keep-alives). Each batch
    is handed over (→ in_flight) before it is yielded, so a retraction committing meanwhile
    either cancels the publish first or sends the kill after it; it is marked delivered
    when the transport asks for more, i.e. once it has been written to the connection."""
    limit = rt.settings.stream_batch
    sent_kills: set[str] = set()
    kills_phase = True
    last = max(cursor, 0)
    quiet = 0.0
    while until is None or time.monotonic() < until:
        waiter = signal(rt).waiter()
        async with rt.db.session() as s:
            if kills_phase:
                fetched = await store.stream_kills(s, account_id, limit=100_000)
            else:
                fetched = await store.stream_batch(s, account_id, after=last, now=utcnow(), limit=limit)
            rows = [r for r in fetched if r.id not in sent_kills]  # kills of the first phase go once
            if rows:
                await contents(rt).load(s, rows)
        if not kills_phase and fetched:
            last = max(last, max(r.seq for r in fetched))
        if rows:
            by_state: dict[str, list[str]] = defaultdict(list)
            for r in rows:
                by_state[r.state].append(r.id)
            moved = await writes(rt).submit(Op(CLAIM, account_id, [r.id for r in rows], dict(by_state)))
            rows = [r for r in rows if r.id in moved]
        if rows:
            events, unrenderable = [], []
            for r in rows:
                try:
                    events.append(_feed_event(r, contents(rt).data(r, platform, account_id)))
                except RenderError as exc:
                    unrenderable.append({"b_id": r.id, "b_error": exc.error})
            if unrenderable:
                await _fail(rt, unrenderable)
            quiet = 0.0
            if events:
                yield events
            if kills_phase:
                sent_kills.update(e.delivery_id for e in events)
            await writes(rt).submit(Op(DELIVERED, account_id, [e.delivery_id for e in events]))
        if kills_phase or fetched:
            kills_phase = False
            continue
        if rt.stop_event.is_set():
            return  # shutting down: the client resumes from its cursor elsewhere
        timeout = rt.settings.poll_interval_s  # also how soon a released embargo goes out
        if until is not None:
            timeout = max(min(timeout, until - time.monotonic()), 0.0)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            quiet += timeout
            if idle_beat is not None and quiet >= idle_beat:
                quiet = 0.0
                yield []


async def _fail(rt: Runtime, failures: list[dict]) -> None:
    """A delivery the platform form cannot be made for (rendering rules changed since its
    creation): failed with the reason, never sent."""
    async with rt.db.transaction() as s:
        await store.mark_failed(s, failures, utcnow(), from_states=[IN_FLIGHT])


async def _platform(rt: Runtime, account_id: str) -> str:
    async with rt.db.session() as s:
        account = await s.get(Account, account_id)
    return account.platform if account else ""


def _feed_event(row, data: dict) -> FeedEvent:
    return FeedEvent(seq=row.seq, event_id=row.id, type=EVENT_TYPES[row.kind], item_id=row.item_id,
                     version=row.version, title=data.get("title", ""), body=data.get("body", ""),
                     delivery_id=row.id, time=iso(row.created_at) or "", data=data)


# --- acknowledgements ------------------------------------------------------------------------

async def ack(rt: Runtime, who: Principal, delivery_ids: list[str]) -> int:
    """A client confirms deliveries (its own only; one unknown or foreign id refuses the
    whole batch); acknowledged kills may finish a retraction. Recorded together with the
    other connections' writes of the same few milliseconds."""
    account_id = client_account(who)
    ids = list(dict.fromkeys(delivery_ids))
    if not ids:
        raise invalid("validation_failed", "delivery_ids 不能为空")
    return await writes(rt).submit(Op(ACK, account_id, ids))


async def flush_writes(rt: Runtime, ops: list[Op]) -> None:
    """Apply the writes of many connections in one transaction: hand-overs grouped by the
    state they were read in, deliveries written, acknowledgements checked (each client its
    own) and applied, announced in one event, and retractions they finish closed."""
    now = utcnow()
    claims = [op for op in ops if op.kind == CLAIM]
    delivered = [i for op in ops if op.kind == DELIVERED for i in op.ids]
    acks = [op for op in ops if op.kind == ACK]
    async with rt.unit_of_work() as s:
        if claims:
            by_state: dict[str, list[str]] = defaultdict(list)
            for op in claims:
                for state, ids in op.by_state.items():
                    by_state[state].extend(ids)
            moved = await store.stream_claim(s, by_state, now)
            for op in claims:
                op.result = moved.intersection(op.ids)
        if delivered:
            await store.mark_delivered(s, delivered, now)
        for op in ops:
            if op.kind == DELIVERED:
                op.result = len(op.ids)
        if acks:
            await _acknowledge(rt, s, acks, now)


async def _acknowledge(rt: Runtime, s, acks: list[Op], now) -> None:
    owners = await store.owners(s, [i for op in acks for i in op.ids])
    valid: list[Op] = []
    for op in acks:
        missing = [i for i in op.ids if i not in owners]
        if missing:
            op.error = AppError(404, "delivery_not_found", "未找到投递记录", {"ids": missing[:20]})
        elif any(owners[i][0] != op.account_id for i in op.ids):
            op.error = forbidden("other_account", "只能确认本账号的投递")
        else:
            valid.append(op)
    if not valid:
        return
    acked = await store.acknowledge(s, [i for op in valid for i in op.ids], now)
    changed = {r.id for r in acked}
    for op in valid:
        op.result = len(changed.intersection(op.ids))
    await announce_acknowledged(rt, s, acked, now)
    await complete_if_done(rt, s, [owners[i][1] for op in valid for i in op.ids if owners[i][2] == KILL])

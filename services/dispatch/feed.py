"""The client feed: what a stream client (gRPC Subscribe / Connect, REST SSE) receives, and
its acknowledgements. Reads of all connections that have caught up come from the process's
StreamHub (one query per commit, whatever the number of clients); writes of all connections
(handed over, written, acknowledged) go through the process's Coalescer (batcher.py): one
transaction per few milliseconds."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from typing import AsyncIterator

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import as_utc, iso, utcnow
from govmedia_kit.errors import AppError, forbidden, invalid
from govmedia_kit.runtime import Runtime

from . import store
from .batcher import Coalescer, Op
from .domain import RenderError
from .models import EVENT_TYPES, IN_FLIGHT, KILL, MAX_ACK_IDS, PENDING, FeedEvent
from .usecases import announce_acknowledged, complete_if_done, contents, signal

log = logging.getLogger(__name__)
CLAIM, DELIVERED, ACK, CATCH_UP = "claim", "delivered", "ack", "catch_up"


def writes(rt: Runtime) -> Coalescer:
    return rt.state["writes"]


def catch_ups(rt: Runtime) -> Coalescer:
    return rt.state["catch_ups"]


def hub(rt: Runtime) -> "StreamHub":
    return rt.state.setdefault("hub", StreamHub(rt))


class StreamHub:
    """One reader for every open stream of the process. A connection first catches up on its
    own (its open kills, then what follows its cursor); from then on what is new reaches it
    from here: on each commit one query for all connections, not one per connection, so a
    push to 10,000 open streams is one read. Rows go to the connections of their account
    (several, if a client reconnected while its old connection lingers: the hand-over lets
    only one of them send it); an account with no connection here catches up when it
    connects."""

    READ_LIMIT = 20_000
    CATCHING_UP = 4  # connections reading their own backlog at once: 10,000 reconnecting
    # clients queue here instead of exhausting the database pool

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.catch_up = asyncio.Semaphore(self.CATCHING_UP)
        self.connections: dict[str, set[Mailbox]] = defaultdict(set)
        self.after: int | None = None  # the highest seq read
        self.swept_at = utcnow()  # embargoes released up to here were routed
        self._task: asyncio.Task | None = None
        self._next_recheck = 0.0

    async def register(self, account_id: str, token: str = "") -> Mailbox:
        """Before the connection catches up, so nothing committed meanwhile is missed (what
        both see is handed over once). A client with DISPATCH_STREAMS_PER_CLIENT streams open
        here already is refused (429 too_many_streams)."""
        cfg = self.rt.settings
        if len(self.connections.get(account_id, ())) >= cfg.streams_per_client:
            raise too_many_streams(cfg.streams_per_client)
        mailbox = Mailbox(cfg.stream_mailbox, token)
        self.connections[account_id].add(mailbox)  # counted at once: no await between check and add
        if self.after is None:
            try:
                async with self.rt.db.session() as s:
                    after = await store.last_seq(s)
            except BaseException:
                self.unregister(account_id, mailbox)
                raise
            if self.after is None:
                self.after = after
        if self._task is None or self._task.done():
            self._next_recheck = time.monotonic() + cfg.stream_recheck_s
            self._task = asyncio.create_task(self._run())
        return mailbox

    def unregister(self, account_id: str, mailbox: Mailbox) -> None:
        mailboxes = self.connections.get(account_id)
        if mailboxes is not None:
            mailboxes.discard(mailbox)
            if not mailboxes:
                del self.connections[account_id]

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:
            if self.rt.stop_event.is_set():  # every connection waits on its mailbox alone: tell it
                for mailboxes in list(self.connections.values()):
                    for mailbox in list(mailboxes):
                        mailbox.put_nowait(None)

    async def _serve(self) -> None:
        rt = self.rt
        while self.connections and not rt.stop_event.is_set():
            waiter = signal(rt).waiter()
            if time.monotonic() >= self._next_recheck:
                self._next_recheck = time.monotonic() + rt.settings.stream_recheck_s
                try:
                    await self._recheck()
                except Exception:
                    log.exception("stream hub: recheck failed; next time")
            try:
                full = await self._read()
            except Exception:
                log.exception("stream hub: read failed; retrying")
                await asyncio.sleep(0.5)
                continue
            if full:
                continue  # more committed than one read takes
            try:
                await asyncio.wait_for(waiter.wait(), min(rt.settings.poll_interval_s, rt.settings.stream_recheck_s))
            except asyncio.TimeoutError:
                pass  # also how soon a released embargo goes out

    async def _recheck(self) -> None:
        """Every DISPATCH_STREAM_RECHECK_S: end the streams of accounts that no longer receive
        on a stream (closed, deregistered, turned webhook: from the account events) and of
        tokens that no longer verify (the client's secret rotated or revoked puts its subject
        on the revocation list the verifier fetches every JWKS_REFRESH_S; an expired token).
        One read for every account with a stream here; a verification per distinct token."""
        accounts = list(self.connections)
        if not accounts:
            return
        receiving: dict[str, bool] = {}
        async with self.rt.db.session() as s:
            for part in store.chunks(accounts):
                receiving.update(await store.receiving_states(s, part))
        verdicts: dict[str, AppError | None] = {}
        ended = 0
        for account_id in accounts:
            for mailbox in list(self.connections.get(account_id, ())):
                if mailbox.ended is not None:
                    continue
                if receiving.get(account_id) is False:
                    mailbox.end(account_not_receiving())
                elif mailbox.token:
                    if mailbox.token not in verdicts:
                        verdicts[mailbox.token] = await self._verdict(mailbox.token)
                    if verdicts[mailbox.token] is not None:
                        mailbox.end(verdicts[mailbox.token])
                if mailbox.ended is not None:
                    ended += 1
        if ended:
            log.warning("stream hub: %d streams ended (account no longer receiving, or its token revoked)", ended)

    async def _verdict(self, token: str) -> AppError | None:
        try:
            await self.rt.verifier.verify(token)
        except AppError as exc:
            if exc.status == 401:
                return AppError(401, "stream_token_revoked", f"推送流的访问令牌已失效：{exc.message}")
            return None  # verification unavailable (503): not the client's doing; next time
        return None

    async def _read(self) -> bool:
        now = utcnow()
        async with self.rt.db.session() as s:
            rows = await store.stream_new(s, after=self.after, now=now, limit=self.READ_LIMIT)
            released = []
            if (now - self.swept_at).total_seconds() >= self.rt.settings.poll_interval_s:
                released = await store.stream_released(s, since=self.swept_at, now=now, upto_seq=self.after,
                                                       limit=self.READ_LIMIT)
                self.swept_at = now
            ready = [r for r in rows if r.state == PENDING and (r.kind == KILL or as_utc(r.next_attempt_at) <= now)]
            mine = [r for r in ready + released if r.account_id in self.connections]
            if mine:
                await contents(self.rt).load(s, mine)
        if rows:
            self.after = rows[-1].seq
        by_account: dict[str, list] = defaultdict(list)
        for r in mine:
            by_account[r.account_id].append(r)
        for account_id, account_rows in by_account.items():
            for mailbox in self.connections.get(account_id, ()):
                mailbox.put_nowait(account_rows)
        return len(rows) == self.READ_LIMIT


class Mailbox:
    """What the hub hands one connection: lists of rows, None once the process is stopping.
    A list and a future rather than an asyncio.Queue: 10,000 queues held 30 MB of deques.

    Bounded: more than `limit` rows waiting (DISPATCH_STREAM_MAILBOX: the client reads slower
    than the platform pushes) ends the stream (`slow_consumer`) and drops what waited: those
    deliveries were never handed over, so the client gets them again when it reconnects with
    its cursor. `end` is also how the hub ends a stream whose account or token is no longer
    good; the connection raises the error at its next turn."""

    __slots__ = ("items", "_waiter", "rows", "limit", "token", "ended")

    def __init__(self, limit: int = 0, token: str = ""):
        self.items: list = []
        self._waiter: asyncio.Future | None = None
        self.rows = 0
        self.limit = limit
        self.token = token
        self.ended: AppError | None = None

    def put_nowait(self, item) -> None:
        if self.ended is not None:
            return
        if item is not None:
            self.rows += len(item)
            if self.limit and self.rows > self.limit:
                log.warning("stream cut: slow consumer (more than %d events waiting)", self.limit)
                self.end(slow_consumer(self.limit))
                return
        self.items.append(item)
        self._wake()

    def end(self, error: AppError) -> None:
        if self.ended is None:
            self.ended, self.items, self.rows = error, [], 0
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take_all(self) -> list:
        """Everything handed over since the last call (waiting for something); the error
        once the stream was ended."""
        while not self.items and self.ended is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.ended is not None:
            raise self.ended
        items, self.items, self.rows = self.items, [], 0
        return items


def too_many_streams(limit: int) -> AppError:
    return AppError(429, "too_many_streams", f"该客户端同时打开的推送流已达上限（{limit} 个），请先关闭其他连接",
                    {"limit": limit})


def slow_consumer(limit: int) -> AppError:
    return AppError(503, "slow_consumer", f"客户端读取过慢（待发事件超过 {limit} 条），推送流已断开；请携带最后收到的游标重新连接",
                    {"limit": limit})


def account_not_receiving() -> AppError:
    return AppError(403, "account_not_receiving", "账号已关闭、注销或不再以推送流接收，推送流已断开")


class Feed:
    """An open stream as the transports hold it: counted against the client's limit from
    the moment it opens until it is closed (`aclose`) or dropped, iterated or not."""

    __slots__ = ("_hub", "account_id", "mailbox", "_events")

    def __init__(self, hub_: StreamHub, account_id: str, mailbox: Mailbox, events: AsyncIterator):
        self._hub, self.account_id, self.mailbox, self._events = hub_, account_id, mailbox, events

    def __aiter__(self) -> "Feed":
        return self

    def __anext__(self):
        return self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            self._hub.unregister(self.account_id, self.mailbox)

    def __del__(self) -> None:
        self._hub.unregister(self.account_id, self.mailbox)


def client_account(who: Principal) -> str:
    if not who.has(CLIENT_ROLE) or not who.account_id:
        raise forbidden("client_required", "仅矩阵客户端（客户端凭据）可以使用此接口")
    return who.account_id


# --- the feed ---------------------------------------------------------------------------

async def open_feed(rt: Runtime, who: Principal, cursor: int, idle_beat: float | None = None,
                    lifetime: float | None = None, token: str = "") -> Feed:
    """Check the caller before anything is streamed, then hand back its feed (ending after
    `lifetime` seconds, if given, once what was sent is recorded). Refused: not a client
    (403), a negative cursor, an account dispatch knows no longer receives on a stream (403
    account_not_receiving), DISPATCH_STREAMS_PER_CLIENT streams open already (429
    too_many_streams). `token`: the caller's, verified again while the stream lasts."""
    account_id = client_account(who)
    if cursor < 0:
        raise invalid("invalid_cursor", "游标不能为负数", {"cursor": cursor})
    async with rt.db.session() as s:
        if (await store.receiving_states(s, [account_id])).get(account_id) is False:
            raise account_not_receiving()
    until = time.monotonic() + lifetime if lifetime else None
    mailbox = await hub(rt).register(account_id, token)
    return Feed(hub(rt), account_id, mailbox, _feed(rt, account_id, cursor, idle_beat, until, mailbox))


async def _feed(rt: Runtime, account_id: str, cursor: int, idle_beat: float | None,
                until: float | None, mailbox: Mailbox) -> AsyncIterator[list[FeedEvent]]:
    """The events of one client: every open kill first, then what follows `cursor` in seq
    order (and what was never written to a connection: embargoes released since, sends a
    dropped connection left in flight), then new ones as they commit or fall due. Yields
    batches (an empty one after `idle_beat` seconds of quiet, for keep-alives). Each
    publish is handed over (→ in_flight) before it is yielded, so a retraction committing
    meanwhile either cancels the publish first or sends the kill after it; it is marked
    delivered when the transport asks for more, i.e. once it has been written to the
    connection. A kill stays pending until acknowledged."""
    try:
        async for batch in _connection(rt, account_id, cursor, idle_beat, until, mailbox):
            yield batch
    finally:
        hub(rt).unregister(account_id, mailbox)


async def _connection(rt: Runtime, account_id: str, cursor: int, idle_beat: float | None,
                      until: float | None, mailbox: Mailbox) -> AsyncIterator[list[FeedEvent]]:
    limit = rt.settings.stream_batch
    sent_kills: set[str] = set()
    kills_phase, caught_up = True, False
    last = max(cursor, 0)
    quiet = 0.0
    closing = False  # the hub said the process is stopping
    # The first read (the platform, the open kills, the first batch) is made together with
    # the other connections opening meanwhile: 10,000 clients connecting at once are a few
    # queries, not 30,000 (flush_catch_ups).
    platform, first_kills, first_batch, more = await catch_ups(rt).submit(Op(CATCH_UP, account_id, [], cursor=last))
    prefetched = [first_kills, first_batch]
    while until is None or time.monotonic() < until:
        if mailbox.ended is not None:
            raise mailbox.ended  # cut by the hub: slow consumer, account closed, token revoked
        if caught_up:
            if closing:
                return
            # No poll per connection (10,000 timers a second cost a core): the hub hands rows
            # over and, at shutdown, None; a timeout only for SSE's keep-alive and lifetime.
            timeout = None if idle_beat is None else idle_beat - quiet
            if until is not None:
                left = until - time.monotonic()
                timeout = left if timeout is None else min(timeout, left)
            fetched = rows = events = None  # not held while waiting: 10,000 connections, 10,000 batches
            try:
                if timeout is None:
                    handed = await mailbox.take_all()
                else:
                    async with asyncio.timeout(max(timeout, 0.0)):
                        handed = await mailbox.take_all()
            except TimeoutError:
                if rt.stop_event.is_set():
                    return  # shutting down: the client resumes from its cursor elsewhere
                if idle_beat is not None and (until is None or time.monotonic() < until):
                    quiet = 0.0
                    yield []
                continue
            if handed[0] is None:
                return  # shutting down
            closing = None in handed
            rows = fetched = [r for handed_rows in handed if handed_rows is not None for r in handed_rows]
        elif prefetched:
            fetched = prefetched.pop(0)
            rows = [r for r in fetched if r.id not in sent_kills]
        else:
            async with hub(rt).catch_up, rt.db.session() as s:
                if kills_phase:
                    fetched = await store.stream_kills(s, account_id, limit=100_000)
                else:
                    fetched = await store.stream_batch(s, account_id, after=last, now=utcnow(), limit=limit)
                rows = [r for r in fetched if r.id not in sent_kills]  # kills of the first phase go once
                if rows:
                    await contents(rt).load(s, rows)
        if not kills_phase and not caught_up and fetched:
            last = max(last, max(r.seq for r in fetched))
        publishes = [r for r in rows if r.kind != KILL]
        if publishes:
            # A publish is handed over before it is written (see above). A kill needs no
            # hand-over: it always wins, and one not written stays open and goes again on
            # reconnect; skipping it saves a write per client when a retraction must be fast.
            by_state: dict[str, list[str]] = defaultdict(list)
            for r in publishes:
                by_state[r.state].append(r.id)
            moved = await writes(rt).submit(Op(CLAIM, account_id, [r.id for r in publishes], dict(by_state)))
            rows = [r for r in rows if r.kind == KILL or r.id in moved]
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
            # A publish written is recorded as delivered. A kill is not (it stays open until
            # acknowledged, and goes again on reconnect), as a webhook kill: one write per
            # client less when a retraction must be fast.
            published = [e.delivery_id for e in events if e.type != EVENT_TYPES[KILL]]
            if published:
                await writes(rt).submit(Op(DELIVERED, account_id, published))
        if caught_up:
            continue
        if kills_phase:
            kills_phase = False
            continue
        if more or (fetched and not prefetched and more is None):
            more = None  # the joint read was cut at `limit`: read on alone until a read comes back empty
            continue
        caught_up = True  # from now on the hub reads for this connection
        if rt.stop_event.is_set():
            return


async def _fail(rt: Runtime, failures: list[dict]) -> None:
    """A delivery the platform form cannot be made for (rendering rules changed since its
    creation): failed with the reason, never sent."""
    async with rt.db.transaction() as s:
        await store.mark_failed(s, failures, utcnow(), from_states=[IN_FLIGHT])


async def flush_catch_ups(rt: Runtime, ops: list[Op]) -> None:
    """The first read of many connections at once: their platforms, their open kills, and
    the first `DISPATCH_STREAM_BATCH` of each one's feed after its cursor. Each op's result:
    (platform, kills, batch, whether the batch may have more)."""
    limit = rt.settings.stream_batch
    accounts = sorted({op.account_id for op in ops})
    async with hub(rt).catch_up, rt.db.session() as s:
        platform_of = await store.platforms(s, accounts)
        kills = await store.stream_kills_many(s, accounts)
        batch = await store.stream_batch_many(s, accounts, after=min(op.cursor for op in ops), now=utcnow(),
                                              limit=limit)
        await contents(rt).load(s, kills + batch)
    kills_of: dict[str, list] = defaultdict(list)
    batch_of: dict[str, list] = defaultdict(list)
    for r in kills:
        kills_of[r.account_id].append(r)
    for r in batch:
        batch_of[r.account_id].append(r)
    for op in ops:
        rows = batch_of.get(op.account_id, [])
        mine = [r for r in rows if r.seq > op.cursor or r.state in (PENDING, IN_FLIGHT)]
        op.result = (platform_of.get(op.account_id, ""), kills_of.get(op.account_id, []), mine, len(rows) >= limit)


def _feed_event(row, data: dict) -> FeedEvent:
    return FeedEvent(seq=row.seq, event_id=row.id, type=EVENT_TYPES[row.kind], item_id=row.item_id,
                     version=row.version, title=data.get("title", ""), body=data.get("body", ""),
                     delivery_id=row.id, time=_iso(row.created_at) or "", data=data)


# The deliveries of one push or kill share their creation time: formatted once, not once per client.
_iso = functools.lru_cache(maxsize=64)(iso)


# --- acknowledgements ------------------------------------------------------------------------

async def ack(rt: Runtime, who: Principal, delivery_ids: list[str]) -> int:
    """A client confirms deliveries (its own only; one unknown or foreign id refuses the
    whole batch); acknowledged kills may finish a retraction. Recorded together with the
    other connections' writes of the same few milliseconds."""
    account_id = client_account(who)
    ids = list(dict.fromkeys(delivery_ids))
    if not ids:
        raise invalid("validation_failed", "delivery_ids 不能为空")
    # Checked here, before the batch joins the shared transaction: a write that fails there
    # fails every connection's writes of the same few milliseconds. (A NUL is refused by each
    # transport before this: the request guard, grpc_errors, refuse_nul on Connect.)
    if len(ids) > MAX_ACK_IDS:
        raise invalid("validation_failed", f"一次最多确认 {MAX_ACK_IDS} 条", {"max": MAX_ACK_IDS})
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

"""Delivery mode `nats`: the NATS servers hold the clients' connections and copy each event
to them; dispatch decides, records and publishes (docs/nats-client-protocol.md).

- The kill first, the bookkeeping after: the transaction that records a retraction (or a
  push) creates its deliveries as sent once and due again a little later; right after it
  commits, `FanOut` publishes one event to each target's subject. Acknowledgements come back
  on `govmedia.client.<id>.ack` and are written in coalesced transactions (batcher.py).
- What is not acknowledged goes again (`resender`): every due delivery, kills first, is
  claimed by moving its next try on (2 s doubling to 60 s), then published. A process that
  died between commit and publish leaves rows that are due a few seconds later: nothing is
  lost. Several replicas: each publishes what it committed or claimed; the replies go to one
  of them (a queue group).
- A client that (re)connects says hello on `govmedia.client.<id>.hello`: it gets every
  unacknowledged kill first, then every unacknowledged publish in order. The catch-up comes
  from the deliveries themselves, which already say who acknowledged what: a JetStream copy
  would be a second record of the same thing and a consumer per client.
- A kill always wins: a retraction cancels the item's pending publishes in its transaction
  (never sent again), drops those still queued here, and is queued ahead of publishes."""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from datetime import timedelta
from typing import NamedTuple

import nats
from pydantic import ValidationError
from sqlalchemy import event
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.bus import servers
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.errors import AppError
from govmedia_kit.nats_estate import CLIENT_PREFIX
from govmedia_kit.runtime import Runtime, wait_any

from . import store
from .batcher import Coalescer, Op
from .domain import RenderError, cloud_event, encode
from .models import KILL, MAX_ACK_IDS, NATS, PENDING, MetricsBody

log = logging.getLogger(__name__)
QUEUE_GROUP = "dispatch"  # each reply is handled by one replica
SEND_BATCH = 20_000


class Outgoing(NamedTuple):
    """One event to publish: a delivery's identity and what renders it."""
    id: str
    account_id: str
    item_id: str
    version: int
    kind: str
    created_at: object


def events_subject(account_id: str) -> str:
    return f"{CLIENT_PREFIX}.{account_id}.events"


def fanout(rt: Runtime) -> "FanOut":
    return rt.state["fanout"]


def created_for_nats(created, item_id: str, version: int, kind: str, now) -> list[Outgoing]:
    """Of the rows store.insert_deliveries created, those FanOut sends once they commit."""
    return [Outgoing(r.id, r.account_id, item_id, version, kind, now)
            for r in created if r.mode == NATS and r.state == PENDING]


class FanOut:
    """The process's publisher to matrix clients: kills queued ahead of publishes, sent in
    batches as soon as the connection and the loop allow."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.nc: nats.NATS | None = None
        self.kills: list[Outgoing] = []
        self.publishes: list[Outgoing] = []
        self.wake = asyncio.Event()
        self.platforms: dict[str, str] = {}  # account → platform (an account's platform never changes)
        self.sent = 0
        # How long the last burst took from queued to all published (seconds): a delivery is
        # sent again only once it has been out DISPATCH_NATS_RESEND_BASE_S, not merely that long
        # after its commit (a kill to 30,000 takes seconds to go out: resending from the commit
        # sent it twice to clients whose acknowledgements were still on their way).
        self.lag_s = 0.0
        self._burst_started: float | None = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def after_commit(self, session: AsyncSession, rows: list[Outgoing]) -> None:
        """Send `rows` once the session's transaction commits (never before: a client could
        acknowledge a delivery that is not there yet)."""
        if rows:
            event.listen(session.sync_session, "after_commit", lambda _s: self.queue(rows), once=True)

    def queue(self, rows: list[Outgoing]) -> None:
        killed = {r.item_id for r in rows if r.kind == KILL}
        if killed:  # their publishes were cancelled with the retraction: never sent after it
            self.publishes = [p for p in self.publishes if p.item_id not in killed]
        for r in rows:
            (self.kills if r.kind == KILL else self.publishes).append(r)
        if self._burst_started is None:
            self._burst_started = time.monotonic()
        self.wake.set()

    @property
    def busy(self) -> bool:
        return bool(self.kills or self.publishes)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if not self.busy:
                self.wake.clear()
                await wait_any((stop, self.wake), None)
                continue
            if not self.connected:
                # Recorded and due again shortly: the resender sends them once connected.
                self.kills, self.publishes, self._burst_started = [], [], None
                continue
            if self.kills:
                batch, self.kills = self.kills[:SEND_BATCH], self.kills[SEND_BATCH:]
            else:
                batch, self.publishes = self.publishes[:SEND_BATCH], self.publishes[SEND_BATCH:]
            try:
                await self.send(batch)
            except Exception:
                log.exception("nats fan-out of %d events failed; they go again when due", len(batch))
                await asyncio.sleep(0.2)
            if not self.busy and self._burst_started is not None:
                self.lag_s, self._burst_started = time.monotonic() - self._burst_started, None

    async def send(self, rows: list[Outgoing]) -> None:
        from .usecases import contents  # usecases imports this module

        texts = contents(self.rt)
        unknown = sorted({r.account_id for r in rows} - self.platforms.keys())
        async with self.rt.db.session() as s:
            await texts.load(s, rows)
            for part in store.chunks(unknown):
                self.platforms.update(await store.platforms(s, part))
        nc = self.nc
        templates: dict[tuple, tuple[bytes, bytes, bytes] | None] = {}
        for r in rows:
            platform = self.platforms.get(r.account_id, "")
            key = (r.item_id, r.version, r.kind, platform, r.created_at)
            if key not in templates:
                templates[key] = event_template(texts, r, platform)
            pieces = templates[key]
            if pieces is None:
                continue  # refused at creation (failed there); rules changed since: never sent
            head, middle, tail = pieces
            await nc.publish(events_subject(r.account_id), head + r.id.encode() + middle + r.account_id.encode() + tail)
        await nc.flush()
        self.sent += len(rows)


# Stand-ins for the per-client parts while a template is encoded: plain ASCII (JSON keeps it
# as it is) and random per process, so no item's text can contain them.
_ID, _ACCOUNT = f"delivery{secrets.token_hex(8)}", f"account{secrets.token_hex(8)}"


def event_template(texts, row: Outgoing, platform: str) -> tuple[bytes, bytes, bytes] | None:
    """The CloudEvent of `row` for every account of `platform`, as the bytes around its two
    per-client parts (the delivery id, the account id): 10,000 kills are one rendering and
    10,000 concatenations, not 10,000 JSON encodings (a third of a second here). Ids are hex
    digits, which JSON writes as they are, so the result is byte for byte `encode(cloud_event(…))`.
    None: the item cannot take the platform's form."""
    try:
        data = texts.data(row._replace(id=_ID), platform, _ACCOUNT)
    except RenderError:
        return None
    body = encode(cloud_event(_ID, row.kind, row.item_id, row.created_at, data))
    head, rest = body.split(_ID.encode(), 1)
    middle, tail = rest.split(_ACCOUNT.encode(), 1)
    return head, middle, tail


# --- the connection and what clients send ---------------------------------------------------

def _account_of(subject: str) -> str:
    """govmedia.client.<id>.<what>: the server let only that client publish there."""
    return subject.split(".")[2]


def parse_ack(data: bytes) -> list[str]:
    """{"ids": [...]} → the ids (ValueError: not an acknowledgement)."""
    body = json.loads(data)
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or len(ids) > MAX_ACK_IDS or not all(
            isinstance(i, str) and 0 < len(i) <= 32 for i in ids):
        raise ValueError(f"an acknowledgement is {{\"ids\": [1..{MAX_ACK_IDS} delivery ids]}}")
    return list(dict.fromkeys(ids))


class Replies:
    """The subscriptions to every client's acknowledgements, hellos and metrics."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.refused = 0  # messages that were not what the protocol says

    async def on_ack(self, msg) -> None:
        from .feed import ACK, writes

        try:
            ids = parse_ack(msg.data)
        except ValueError as exc:
            self._refuse("ack", msg.subject, exc)
            return
        writes(self.rt).post(Op(ACK, _account_of(msg.subject), ids))

    async def on_hello(self, msg) -> None:
        self.rt.state["hellos"].post(Op("hello", _account_of(msg.subject), []))

    async def on_metrics(self, msg) -> None:
        from .metrics import report

        account_id = _account_of(msg.subject)
        try:
            body = MetricsBody.model_validate_json(msg.data)
        except ValidationError as exc:
            self._refuse("metrics", msg.subject, exc)
            return
        who = Principal(subject=account_id, name=account_id, unit_id="", roles=(CLIENT_ROLE,), account_id=account_id)
        try:
            await report(self.rt, who, body)
        except AppError as exc:
            self._refuse("metrics", msg.subject, exc)

    def _refuse(self, what: str, subject: str, exc: Exception) -> None:
        self.refused += 1
        log.warning("nats %s from client %s refused: %s", what, _account_of(subject), str(exc)[:200])


async def flush_hellos(rt: Runtime, ops: list[Op]) -> None:
    """Clients that (re)connected: every open kill of theirs first, then every open publish,
    in one read for all of them."""
    accounts = sorted({op.account_id for op in ops})
    rows: list = []
    async with rt.db.session() as s:
        for part in store.chunks(accounts):
            rows += await store.nats_open(s, part, utcnow())
    out = [Outgoing(r.id, r.account_id, r.item_id, r.version, r.kind, r.created_at) for r in rows]
    fanout(rt).queue([r for r in out if r.kind == KILL] + [r for r in out if r.kind != KILL])


async def clients_connection(rt: Runtime, stop: asyncio.Event) -> None:
    """Dispatch's user in the NATS account CLIENTS (DISPATCH_CLIENTS_NATS_CREDS): publishes
    every client's events, hears every client's replies. Drained on SIGTERM."""
    cfg = rt.settings
    url = cfg.clients_nats_url or cfg.nats_url
    replies = rt.state["replies"]
    out = fanout(rt)
    while not stop.is_set() and out.nc is None:
        try:
            out.nc = await nats.connect(
                servers(url), name="govmedia-dispatch-clients", max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                ping_interval=5, max_outstanding_pings=3, connect_timeout=2, drain_timeout=5,
                pending_size=8 * 1024 * 1024, error_cb=_on_error,
                **({"user_credentials": cfg.clients_nats_creds} if cfg.clients_nats_creds else {}))
        except Exception as exc:
            log.warning("NATS for matrix clients at %s not reachable (%s); retrying", url.rpartition("@")[2],
                        type(exc).__name__)
            out.nc = None
            if await wait_any((stop,), 1.0):
                return
    if out.nc is None:
        return
    for what, cb in (("ack", replies.on_ack), ("hello", replies.on_hello), ("metrics", replies.on_metrics)):
        await out.nc.subscribe(f"{CLIENT_PREFIX}.*.{what}", queue=QUEUE_GROUP, cb=cb, pending_msgs_limit=200_000)
    log.info("nats delivery: connected for matrix clients at %s", url.rpartition("@")[2])
    await stop.wait()
    try:
        await out.nc.drain()  # replies already received are handled; then closed
    except Exception as exc:
        log.debug("clients connection drain: %s", exc)


async def _on_error(exc: Exception) -> None:
    log.warning("NATS (matrix clients): %s", exc)


async def sender(rt: Runtime, stop: asyncio.Event) -> None:
    await fanout(rt).run(stop)


async def hello_coalescer(rt: Runtime, stop: asyncio.Event) -> None:
    await rt.state["hellos"].run(stop)


async def resender(rt: Runtime, stop: asyncio.Event) -> None:
    """Send again what is due and not acknowledged (and embargoed publishes whose time came),
    kills first. Claimed in the database, so two replicas never both take the same row."""
    cfg = rt.settings
    out = fanout(rt)
    while not await wait_any((stop,), min(1.0, cfg.nats_resend_base_s / 2)):
        if not out.connected or out.busy or rt.state["writes"].pending:
            # No attempt is spent while the servers are out of reach, nor while this process
            # is still sending, or has acknowledgements to write that may be of these very rows.
            continue
        try:
            cutoff = utcnow() - timedelta(seconds=out.lag_s)
            async with rt.db.session() as s:  # a read first: the write lock only when something is due
                due = await store.nats_next_due(s)
            if due is None or as_utc(due) > cutoff:
                continue
            async with rt.db.transaction() as s:
                rows = await store.nats_claim_due(s, utcnow(), cfg.nats_resend_batch, cfg.nats_resend_base_s,
                                                  cfg.nats_resend_cap_s, due_by=cutoff)
        except Exception:
            log.exception("nats resend: claim failed; next round")
            continue
        if rows:
            out.queue([Outgoing(r.id, r.account_id, r.item_id, r.version, r.kind, r.created_at) for r in rows])


def install(rt: Runtime) -> None:
    """The process's fan-out state (service.on_start)."""
    rt.state["fanout"] = FanOut(rt)
    rt.state["replies"] = Replies(rt)
    rt.state["hellos"] = Coalescer(lambda ops: flush_hellos(rt, ops), rt.settings.write_coalesce_ms / 1000,
                                   max_ops=1000)


WORKERS = [clients_connection, sender, hello_coalescer, resender]

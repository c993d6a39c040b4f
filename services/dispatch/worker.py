"""The webhook worker: claims due deliveries in batches (kills first), sends them
concurrently with signed CloudEvents, and records the outcomes in bulk.

Each endpoint (the webhook URL's host:port) gets at most DISPATCH_ENDPOINT_CONCURRENCY
requests at once, and a circuit breaker: after DISPATCH_BREAKER_FAILURES failures in a row
(timeouts, connection errors, 5xx) nothing is sent to it for DISPATCH_BREAKER_COOLDOWN_S
(its waiting deliveries are moved past the cool-down without an attempt counted), then one
try goes through (half-open): success closes the breaker, failure opens it again. So a
dead or slow endpoint holds a few of the worker's slots, never all of them."""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit import egress
from govmedia_kit.db import as_utc, iso, utcnow
from govmedia_kit.runtime import Runtime, wait_any
from govmedia_kit.trace_context import continued

from . import store, usecases
from .http import HttpClient, describe
from .domain import EndpointGate, RenderError, backoff, cloud_event, encode, is_endpoint_failure, signature
from .models import KILL, PUBLISH

log = logging.getLogger(__name__)
GONE_ERROR = usecases.GONE_ERROR
PASSES = 4  # claim passes per round while per-endpoint limits leave room unused
USER_AGENT = "govmedia-dispatch/1"


@dataclass
class Outcome:
    claimed: store.Claimed
    status: int | None  # HTTP status, None when no answer came
    error: str = ""
    render_failed: bool = False
    opened_until: datetime | None = None  # this failure opened the endpoint's breaker
    trace_parent: str | None = None  # the push's or retraction's trace (tracing on)


@dataclass
class Claim:
    claimed: store.Claimed
    body: bytes | None = None
    error: str = ""  # a render failure: not sent
    trace_parent: str | None = None


class Leases:
    """The deliveries this process holds in flight, under its lease: renewed every third of
    DISPATCH_LEASE_S while held; and, as often, the expired leases of other (crashed)
    processes taken back. A replica starting takes nothing a live one holds."""

    def __init__(self, rt: Runtime):
        self.rt = rt
        self.owner: str = rt.state["instance"]
        self.lease_s: float = rt.settings.lease_s
        self.held: set[str] = set()
        self._next_check = 0.0

    def until(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.lease_s)

    async def tend(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.lease_s / 3
        now = utcnow()
        async with self.rt.db.transaction() as s:
            if self.held:
                await store.renew_leases(s, sorted(self.held), self.owner, self.until(now))
            taken = await store.take_back_expired(s, now, self.owner)
        if taken:
            usecases.signal(self.rt).committed()
            log.info("webhook worker: %d deliveries whose lease expired (their process stopped) go out again", taken)


async def webhook_worker(rt: Runtime, stop: asyncio.Event) -> None:
    """Runs for the life of the process; what a crashed process had in flight goes out again
    once its lease expires (Leases)."""
    cfg = rt.settings
    gate = usecases.gate(rt)
    leases = Leases(rt)
    running: set[asyncio.Task] = set()
    finished: list[Outcome] = []
    done = asyncio.Event()  # a send finished: record it, and there is room for more

    def on_done(task: asyncio.Task) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is None:
            outcome: Outcome = task.result()
            if not outcome.render_failed:
                outcome.opened_until = gate.finished(outcome.claimed.endpoint, is_endpoint_failure(outcome.status),
                                                     utcnow())
            finished.append(outcome)
        done.set()

    # Our own lean HTTP/1.1 client (http.py): profiled at 10,000 webhooks, httpx's pool took
    # most of the event loop, and aiohttp's request machinery still 40 % of the CPU.
    http = HttpClient(cfg.webhook_timeout_s, limit=cfg.concurrency, user_agent=USER_AGENT,
                      egress=egress.policy(cfg))
    try:
        while not stop.is_set():
            waiter = usecases.signal(rt).waiter()
            done.clear()
            delay = cfg.poll_interval_s
            try:
                await leases.tend()
                if finished:
                    batch = list(finished)
                    await record_outcomes(rt, batch, leases.owner)
                    del finished[:len(batch)]  # kept for the next round if recording failed
                    leases.held.difference_update(o.claimed.id for o in batch)
                room = min(cfg.concurrency - len(running), cfg.claim_batch)
                now = utcnow()
                claims, full = await claim(rt, gate, room, now, leases) if room > 0 else ([], False)
                for c in claims:
                    if c.body is None:
                        task = asyncio.create_task(_unrenderable(c))
                    else:
                        task = asyncio.create_task(send(http, c.claimed, c.body, c.trace_parent))
                    running.add(task)
                    task.add_done_callback(on_done)
                if full:
                    continue  # there may be more due
                if not claims and room > 0:
                    delay = await _until_next_due(rt, gate, now, delay)
            except Exception:
                log.exception("webhook worker round failed; retrying")
                await asyncio.sleep(1)
                continue
            await wait_any((stop, waiter, done), delay)
        # Shutting down: give the sends in hand a moment, keep what finished; the rest stay
        # in flight and go out again once their lease expires.
        if running:
            await asyncio.wait(set(running), timeout=3)
        if finished:
            await record_outcomes(rt, finished, leases.owner)
    finally:
        await http.close()


async def _until_next_due(rt: Runtime, gate: EndpointGate, claimed_at, ceiling: float) -> float:
    async with rt.db.session() as s:
        due = as_utc(await store.next_due(s, gate.blocked(claimed_at)))
    if due is None:
        return ceiling
    if due <= claimed_at:
        return ceiling  # due but not claimed: a kill waiting for its publish in flight; the finish wakes us
    return min(max((due - utcnow()).total_seconds(), 0.0), ceiling)


async def claim(rt: Runtime, gate: EndpointGate, room: int, now: datetime,
                leases: Leases) -> tuple[list[Claim], bool]:
    """Mark up to `room` due deliveries in flight, no endpoint beyond what its gate lets
    through, with their signed bodies ready. A pass whose candidates a full endpoint trimmed
    is followed by another without that endpoint (a few at most). Answers the claims and
    whether the room was filled."""
    claims: list[Claim] = []
    blocked = gate.blocked(now)
    for _ in range(PASSES):
        trimmed = False
        async with rt.db.transaction() as s:
            candidates = await store.due_candidates(s, now, room, blocked)
            chosen, taken = [], Counter()
            for c in candidates:
                if len(chosen) >= room:
                    break
                if c.id in leases.held:
                    continue  # a kill of ours whose lease renewal is late: still being sent here
                if gate.free(c.endpoint, now) - taken[c.endpoint] <= 0:
                    trimmed = True
                    continue
                chosen.append(c)
                taken[c.endpoint] += 1
            got = await store.claim(s, chosen, now, leases.owner, leases.until(now))
            parents = {}
            if got:
                await usecases.contents(rt).load(s, got)
                if rt.tracing:
                    parents = await store.trace_parents(s, got)
        leases.held.update(c.id for c in got)  # committed: ours until recorded
        for c in got:
            claims.append(_prepare(rt, c, parents.get((c.item_id, c.kind))))
            if claims[-1].body is not None:
                gate.started(c.endpoint, now)
        room -= len(got)
        if not trimmed or room <= 0 or not candidates:
            break
        blocked = gate.blocked(now)
    return claims, room <= 0


def _prepare(rt: Runtime, c: store.Claimed, trace_parent: str | None) -> Claim:
    try:
        data = usecases.contents(rt).data(c, c.platform, c.account_id)
    except RenderError as exc:
        return Claim(c, None, exc.error, trace_parent)
    return Claim(c, encode(cloud_event(c.id, c.kind, c.item_id, c.created_at, data)), trace_parent=trace_parent)


async def _unrenderable(c: Claim) -> Outcome:
    return Outcome(c.claimed, None, c.error, render_failed=True)


async def send(http: HttpClient, c: store.Claimed, body: bytes, trace_parent: str | None = None) -> Outcome:
    """POST one CloudEvent, signed per DESIGN.md §6; with tracing on, as a span of the push's
    (or the retraction's) trace whose traceparent the client receives too."""
    timestamp = str(int(time.time()))
    headers = [
        (b"Content-Type", b"application/cloudevents+json"),
        (b"X-Timestamp", timestamp.encode()),
        (b"X-Signature-256", signature(c.secret, timestamp, body).encode()),
    ]
    with continued(trace_parent, f"POST {c.kind}", SpanKind.CLIENT, {
            "http.request.method": "POST", "server.address": c.endpoint, "govmedia.delivery_id": c.id,
            "govmedia.account_id": c.account_id}) as span:
        if span is not None:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            headers += [(k.encode(), v.encode()) for k, v in carrier.items()]
        outcome = await _post(http, c, headers, body)
        if span is not None and outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
    outcome.trace_parent = trace_parent
    return outcome


async def _post(http: HttpClient, c: store.Claimed, headers: list, body: bytes) -> Outcome:
    try:
        status = await http.post(c.url, headers, body)
    except Exception as exc:  # refused, reset, a malformed URL in the ledger: none may stop the worker
        return Outcome(c, None, describe(exc))  # never an address a name resolved to
    return Outcome(c, status, "" if 200 <= status < 300 else f"HTTP {status}")


async def record_outcomes(rt: Runtime, outcomes: list[Outcome], owner: str) -> None:
    """2xx acknowledged; 410 failed and the endpoint deactivated; a render failure failed at
    once; anything else retried with backoff until the attempts run out (never for a kill),
    then failed and announced. An endpoint whose breaker opened has its waiting deliveries
    moved past the cool-down. Every change goes into the history in the same transaction.
    A 2xx or a 410 counts whoever holds the lease now (the client answered); a retry or a
    failure only while this process still holds it."""
    cfg = rt.settings
    now = utcnow()
    acked, gone, retry, exhausted, unrenderable = [], [], [], [], []
    opened: dict[str, datetime] = {}
    for o in outcomes:
        if o.opened_until is not None:
            opened[o.claimed.endpoint] = max(o.opened_until, opened.get(o.claimed.endpoint, o.opened_until))
        if o.render_failed:
            unrenderable.append(o)
        elif o.status is not None and 200 <= o.status < 300:
            acked.append(o)
        elif o.status == 410:
            gone.append(o)
        elif o.claimed.attempts >= cfg.max_attempts and o.claimed.kind != KILL:
            # A kill is never given up on: an offline client must get it when it is back;
            # it stays outstanding (a straggler in GET /v1/retractions) and keeps its backoff.
            exhausted.append(o)
        else:
            delay = backoff(o.claimed.attempts, cfg.retry_base_s, cfg.retry_cap_s)
            retry.append({"b_id": o.claimed.id, "b_next": now + timedelta(seconds=delay), "b_error": o.error})
    async with rt.unit_of_work() as s:
        done = await store.acknowledge(s, [o.claimed.id for o in acked], now, from_states=store.SENT_STATES)
        await usecases.announce_acknowledged(rt, s, done, now,
                                             {o.claimed.item_id: o.trace_parent for o in acked if o.trace_parent})
        gone_failed = set(await store.mark_failed(s, [{"b_id": o.claimed.id, "b_error": GONE_ERROR} for o in gone],
                                                  now, gone=True, from_states=store.SENT_STATES))
        killed = await store.endpoints_gone(s, sorted({o.claimed.account_id for o in gone}), now, GONE_ERROR)
        retried = await store.reschedule(s, retry, now, owner)
        # A publish that was in flight when its item was retracted does not come back.
        await store.cancel_retracted(s, [i for i in retried if i in {o.claimed.id for o in outcomes
                                                                     if o.claimed.kind == PUBLISH}], now)
        failed = set(await store.mark_failed(
            s, [{"b_id": o.claimed.id, "b_error": o.error} for o in exhausted + unrenderable], now,
            from_states=store.SENT_STATES, owner=owner))
        for endpoint, until in opened.items():
            deferred = await store.defer_endpoint(s, endpoint, until, now, f"circuit open until {iso(until)}")
            log.warning("webhook endpoint %s: circuit open until %s (%d deliveries deferred)", endpoint, iso(until),
                        deferred)
        for o in [o for o in gone if o.claimed.id in gone_failed] + [o for o in exhausted + unrenderable
                                                                       if o.claimed.id in failed]:
            c = o.claimed
            await rt.outbox.emit(s, "govmedia.dispatch.delivery.failed", ev.DeliveryFailed(
                delivery_id=c.id, item_id=c.item_id, account_id=c.account_id, kind=c.kind, attempts=c.attempts,
                last_error=o.error if o.status != 410 else GONE_ERROR), c.id)
        items = [o.claimed.item_id for o in acked + gone if o.claimed.kind == KILL] + killed
        await usecases.complete_if_done(rt, s, items)
    if exhausted or gone:
        log.warning("webhook worker: %d deliveries failed (%d endpoints gone)", len(exhausted) + len(gone), len(gone))

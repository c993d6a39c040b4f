"""The webhook worker: claims due deliveries in batches (kills first), sends them
concurrently with signed CloudEvents, and records the outcomes in bulk."""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.runtime import Runtime, wait_any

from . import store, usecases
from .domain import backoff, cloud_event, encode, render, signature
from .models import KILL, Publication, Retraction

log = logging.getLogger(__name__)
GONE_ERROR = usecases.GONE_ERROR


@dataclass
class Outcome:
    claimed: store.Claimed
    status: int | None  # HTTP status, None when no answer came
    error: str = ""


async def webhook_worker(rt: Runtime, stop: asyncio.Event) -> None:
    """Runs for the life of the process; what is in flight at a crash is sent again at start."""
    cfg = rt.settings
    async with rt.db.transaction() as s:
        reset = await store.reset_in_flight(s, utcnow())
    if reset:
        log.info("webhook worker: %d deliveries left in flight by the last run go out again", reset)
    running: set[asyncio.Task] = set()
    finished: list[Outcome] = []
    done = asyncio.Event()  # a send finished: record it, and there is room for more

    def on_done(task: asyncio.Task) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is None:
            finished.append(task.result())
        done.set()

    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.webhook_timeout_s), limits=limits,
                                 follow_redirects=False) as http:
        while not stop.is_set():
            waiter = usecases.signal(rt).waiter()
            done.clear()
            delay = cfg.poll_interval_s
            try:
                if finished:
                    batch = list(finished)
                    await record_outcomes(rt, batch)
                    del finished[:len(batch)]  # kept for the next round if recording failed
                room = min(cfg.concurrency - len(running), cfg.claim_batch)
                now = utcnow()
                claimed, payloads = await claim(rt, room, now) if room > 0 else ([], {})
                for c in claimed:
                    task = asyncio.create_task(send(http, c, payloads.get(c.item_id, ({}, ""))))
                    running.add(task)
                    task.add_done_callback(on_done)
                if claimed and len(claimed) == room:
                    continue  # there may be more due
                if not claimed and room > 0:
                    delay = await _until_next_due(rt, now, delay)
            except Exception:
                log.exception("webhook worker round failed; retrying")
                await asyncio.sleep(1)
                continue
            await wait_any((stop, waiter, done), delay)
        # Shutting down: give the sends in hand a moment, keep what finished; the rest stay
        # in flight and go out again at the next start.
        if running:
            await asyncio.wait(set(running), timeout=3)
        if finished:
            await record_outcomes(rt, finished)


async def _until_next_due(rt: Runtime, claimed_at, ceiling: float) -> float:
    async with rt.db.session() as s:
        due = as_utc(await store.next_due(s))
    if due is None:
        return ceiling
    if due <= claimed_at:
        return ceiling  # due but not claimed: a kill waiting for its publish in flight; the finish wakes us
    return min(max((due - utcnow()).total_seconds(), 0.0), ceiling)


async def claim(rt: Runtime, limit: int, now) -> tuple[list[store.Claimed], dict[str, tuple[dict, str]]]:
    """Mark up to `limit` due deliveries in flight (one transaction), with the payload and
    retraction reason of each of their items."""
    async with rt.db.transaction() as s:
        claimed = await store.claim_due(s, now, limit)
        if not claimed:
            return [], {}
        items = {c.item_id for c in claimed}
        payloads = dict((await s.execute(
            select(Publication.item_id, Publication.payload).where(Publication.item_id.in_(items)))).all())
        reasons = dict((await s.execute(
            select(Retraction.item_id, Retraction.reason).where(Retraction.item_id.in_(items)))).all())
    return claimed, {i: (payloads.get(i, {}), reasons.get(i, "")) for i in items}


async def send(http: httpx.AsyncClient, c: store.Claimed, content: tuple[dict, str]) -> Outcome:
    """POST one CloudEvent, signed per DESIGN.md §6."""
    payload, reason = content
    data = render(c.kind, c.platform, payload, item_id=c.item_id, version=c.version, account_id=c.account_id,
                  reason=reason)
    body = encode(cloud_event(c.id, c.kind, c.item_id, c.created_at, data))
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/cloudevents+json",
        "X-Timestamp": timestamp,
        "X-Signature-256": signature(c.secret, timestamp, body),
        "User-Agent": "govmedia-dispatch/1",
    }
    try:
        response = await http.post(c.url, content=body, headers=headers)
    except httpx.TimeoutException:
        return Outcome(c, None, "timeout")
    except httpx.HTTPError as exc:
        return Outcome(c, None, f"{type(exc).__name__}: {exc}"[:300])
    except Exception as exc:  # a malformed URL in the ledger must not stop the worker
        return Outcome(c, None, f"{type(exc).__name__}: {exc}"[:300])
    return Outcome(c, response.status_code, "" if response.is_success else f"HTTP {response.status_code}")


async def record_outcomes(rt: Runtime, outcomes: list[Outcome]) -> None:
    """2xx acknowledged; 410 failed and the endpoint deactivated; anything else retried with
    backoff until the attempts run out, then failed and announced."""
    cfg = rt.settings
    now = utcnow()
    acked, gone, retry, exhausted = [], [], [], []
    for o in outcomes:
        if o.status is not None and 200 <= o.status < 300:
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
        done = await store.mark_acknowledged(s, [o.claimed.id for o in acked], now)
        await usecases.announce_acknowledged(rt, s, done, now)
        await store.mark_failed(s, [{"b_id": o.claimed.id, "b_error": GONE_ERROR} for o in gone], now, gone=True)
        killed = await store.endpoints_gone(s, sorted({o.claimed.account_id for o in gone}), now)
        await store.reschedule(s, retry, now)
        await store.mark_failed(s, [{"b_id": o.claimed.id, "b_error": o.error} for o in exhausted], now)
        for o in gone + exhausted:
            c = o.claimed
            await rt.outbox.emit(s, "govmedia.dispatch.delivery.failed", ev.DeliveryFailed(
                delivery_id=c.id, item_id=c.item_id, account_id=c.account_id, kind=c.kind, attempts=c.attempts,
                last_error=o.error if o.status != 410 else GONE_ERROR), c.id)
        items = [o.claimed.item_id for o in acked + gone if o.claimed.kind == KILL] + killed
        await usecases.complete_if_done(rt, s, items)
    if exhausted or gone:
        log.warning("webhook worker: %d deliveries failed (%d endpoints gone)", len(exhausted) + len(gone), len(gone))

"""The NATS JetStream bus: connection, streams, and inbox-backed durable consumers.

Consumers pull with explicit ack. Each event is handled inside one database transaction
together with its inbox row, so a redelivered event is recognised and applied once.
A handler that keeps failing is retried with backoff `max_deliver` times, then the event
goes to `govmedia.dlq.<durable>` (stream GOVMEDIA_DLQ) and is terminated.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, StorageType, StreamConfig
from opentelemetry import propagate, trace
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from .config import SERVICES
from .db import Database, utcnow
from .events import DLQ_PREFIX, DLQ_STREAM, Event, stream_name, stream_subjects

log = logging.getLogger(__name__)
tracer = trace.get_tracer("govmedia.bus")

# handler(runtime, session, event): runs inside the inbox transaction; emit follow-up
# events with runtime.outbox.emit(session, ...) so they commit with the handler's writes.
Handler = Callable[[Any, AsyncSession, Event], Awaitable[None]]


@dataclass
class Consumer:
    durable: str  # e.g. "dispatch-item-approved"; unique per service and subject
    subject: str  # e.g. "govmedia.review.item.approved"
    handler: Handler


@dataclass(frozen=True)
class StreamPolicy:
    """How every stream is kept (ServiceSettings: NATS_STREAM_REPLICAS and the max ages)."""
    replicas: int = 1
    max_age_days: float = 30
    dlq_max_age_days: float = 90


def servers(url: str) -> list[str]:
    """NATS_URL may name several servers of a cluster, comma-separated: any one up will do."""
    return [u.strip() for u in url.split(",") if u.strip()]


class Bus:
    def __init__(self, url: str, name: str, streams: StreamPolicy = StreamPolicy(), creds: str = ""):
        self.url = url
        self.creds = creds  # the service's own NATS user, if the servers require one
        self.name = name
        self.streams = streams
        self.nc: nats.NATS | None = None
        self.js = None

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self, stop: asyncio.Event | None = None) -> None:
        """Connect, retrying until the server answers (or `stop` is set)."""
        while True:
            try:
                self.nc = await nats.connect(
                    servers(self.url),
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    # Short pings notice a dead TCP connection quickly (nats.py #671).
                    ping_interval=5,
                    max_outstanding_pings=3,
                    connect_timeout=2,
                    drain_timeout=5,
                    error_cb=self._on_error,
                    **({"user_credentials": self.creds} if self.creds else {}),
                )
                self.js = self.nc.jetstream(timeout=5)
                await self.ensure_streams()
                return
            except nats.js.errors.APIError as exc:  # reachable, but the streams are refused
                # e.g. more replicas asked for than the cluster has servers: say so, not "unreachable".
                log.error("JetStream refused the platform's streams (%s); retrying", exc.description)
                await self.nc.close()
                self.nc = None
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(2)
            except Exception as exc:  # server not up yet
                # Only the host: a NATS URL may carry a user and password.
                log.warning("NATS at %s not reachable (%s); retrying", self.url.rpartition("@")[2],
                            type(exc).__name__)
                if self.nc is not None:
                    await self.nc.close()
                    self.nc = None
                if stop is not None and stop.is_set():
                    return
                await asyncio.sleep(0.5)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def ensure_streams(self) -> None:
        """Every service declares every stream (idempotently), so start-up order never matters."""
        day = 86400.0
        keep = dict(storage=StorageType.FILE, num_replicas=self.streams.replicas, discard=DiscardPolicy.OLD)
        configs = [
            StreamConfig(name=stream_name(s), subjects=stream_subjects(s), duplicate_window=120,
                         max_age=self.streams.max_age_days * day, **keep)
            for s in SERVICES
        ]
        configs.append(StreamConfig(name=DLQ_STREAM, subjects=[f"{DLQ_PREFIX}.>"],
                                    max_age=self.streams.dlq_max_age_days * day, **keep))
        for cfg in configs:
            try:
                await self.js.add_stream(cfg)
            except nats.js.errors.BadRequestError:
                # It exists with other settings (an operator scaled it, or ours changed): ours win,
                # so every replica of every service agrees on one configuration.
                await self.js.update_stream(cfg)

    async def drain(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()


class ConsumerRunner:
    """Runs one durable consumer until stopped."""

    def __init__(self, runtime, inbox, consumer: Consumer, max_deliver: int = 5, ack_wait_s: float = 10):
        self.runtime = runtime
        self.bus: Bus = runtime.bus
        self.db: Database = runtime.db
        self.inbox = inbox
        self.consumer = consumer
        self.max_deliver = max_deliver
        self.ack_wait_s = ack_wait_s

    def _config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.consumer.durable,
            ack_policy=AckPolicy.EXPLICIT,
            # What a crashed consumer had in hand is redelivered after this long; handlers
            # finish well within it.
            ack_wait=self.ack_wait_s,
            # The bound on redelivery is enforced here (then the dead-letter subject), not by
            # the server: a server-side MaxDeliver would drop the event silently.
            max_deliver=-1,
            max_ack_pending=1000,
            filter_subject=self.consumer.subject,
        )

    async def run(self, stop: asyncio.Event) -> None:
        sub = None
        try:
            sub = await self._loop(stop)
        finally:
            if sub is not None and self.bus.connected:
                try:
                    await sub.unsubscribe()  # else draining the connection waits on it
                except Exception:
                    pass

    async def _loop(self, stop: asyncio.Event):
        service = self.consumer.subject.split(".")[1]
        sub = None
        while not stop.is_set():
            if not self.bus.connected:
                await asyncio.sleep(0.2)
                continue
            try:
                if sub is None:
                    sub = await self.bus.js.pull_subscribe(
                        self.consumer.subject,
                        durable=self.consumer.durable,
                        stream=stream_name(service),
                        config=self._config(),
                    )
                msgs = await sub.fetch(64, timeout=1.0)
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Pull subscriptions can go stale after a server restart (nats.py #504): rebuild.
                log.warning("consumer %s: %s; resubscribing", self.consumer.durable, exc)
                sub = None
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                try:
                    await self.handle(msg)
                except Exception:
                    # Not acknowledged: JetStream redelivers it after the ack wait. The loop lives on.
                    log.exception("consumer %s: could not settle a message", self.consumer.durable)
        return sub

    async def handle(self, msg) -> None:
        headers = dict(msg.headers or {})
        event = Event.from_headers(headers, msg.data)
        with tracer.start_as_current_span(
            f"process {msg.subject}",
            context=propagate.extract(headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation.type": "process",
                "messaging.destination.name": msg.subject,
                "messaging.consumer.group.name": self.consumer.durable,
                "messaging.message.id": event.id,
            },
        ):
            try:
                await self.apply_once(event)
            except Exception as exc:
                await self._failed(msg, event, exc)
                return
        try:
            await msg.ack_sync()
        except Exception as exc:
            # The inbox already holds the event: a redelivery will be acknowledged as a duplicate.
            log.warning("consumer %s: ack of %s failed: %s", self.consumer.durable, event.id, exc)

    async def apply_once(self, event: Event) -> bool:
        """Apply the handler and record the event in the inbox in one transaction.
        Returns False when the event had been applied before."""
        t = self.inbox
        key = (t.c.consumer == self.consumer.durable) & (t.c.event_id == event.id)
        try:
            async with self.db.transaction() as session:
                if (await session.execute(select(t.c.event_id).where(key))).first():
                    return False
                await session.execute(
                    insert(t).values(consumer=self.consumer.durable, event_id=event.id, processed_at=utcnow())
                )
                await self.consumer.handler(self.runtime, session, event)
        except IntegrityError:
            # A concurrent copy of the event won the race to the inbox row.
            async with self.db.session() as session:
                if (await session.execute(select(t.c.event_id).where(key))).first():
                    return False
            raise
        self.runtime.outbox.wake()
        return True

    async def _failed(self, msg, event: Event, exc: Exception) -> None:
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        if delivered >= self.max_deliver:
            log.error(
                "consumer %s: event %s (%s) failed %d times, dead-lettered: %s",
                self.consumer.durable, event.id, msg.subject, delivered, exc,
            )
            headers = dict(msg.headers or {})
            headers.pop("Nats-Msg-Id", None)
            headers["x-dead-letter-reason"] = f"{type(exc).__name__}: {exc}"[:500]
            headers["x-original-subject"] = msg.subject
            await self.bus.js.publish(f"{DLQ_PREFIX}.{self.consumer.durable}", msg.data, headers=headers)
            await msg.term()
        else:
            delay = min(0.5 * 2 ** (delivered - 1), 30.0)
            log.warning(
                "consumer %s: event %s failed (try %d), retry in %.1fs: %s",
                self.consumer.durable, event.id, delivered, delay, exc,
            )
            await msg.nak(delay=delay)

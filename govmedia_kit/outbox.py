"""The transactional outbox, the inbox of processed events, and the idempotency-key
store: tables every service keeps in its own database.

A use case writes its state change and `emit(...)`s its events in one transaction;
the relay publishes committed events to JetStream with `Nats-Msg-Id` = event id, so a
crash between publishing and marking re-publishes, and JetStream's de-duplication (and
every consumer's inbox) makes the second copy harmless.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from google.protobuf.message import Message
from opentelemetry import propagate, trace
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    text,
    update,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from .db import Database, new_id, utcnow
from .events import envelope_headers

log = logging.getLogger(__name__)
tracer = trace.get_tracer("govmedia.outbox")

# An arbitrary constant of this platform's own, taken in each service's own database.
RELAY_LOCK_KEY = 0x676F766D6F62  # "govmob"


@dataclass
class KitTables:
    outbox: Table
    inbox: Table
    idempotency: Table


def kit_tables(metadata: MetaData) -> KitTables:
    """Declare the kit's tables in a service's metadata (so its migrations create them)."""
    outbox = Table(
        "outbox",
        metadata,
        Column("seq", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(200), nullable=False),
        Column("headers", Text, nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True, index=True),
        Column("attempts", Integer, nullable=False, default=0),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", String(100), primary_key=True),
        Column("event_id", String(64), primary_key=True),
        Column("processed_at", DateTime(timezone=True), nullable=False),
    )
    idempotency = Table(
        "idempotency_keys",
        metadata,
        Column("scope", String(300), primary_key=True),  # caller + method + path + key
        Column("request_hash", String(64), nullable=False),
        Column("status", Integer, nullable=False),
        Column("body", LargeBinary, nullable=False),
        Column("content_type", String(100), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    return KitTables(outbox, inbox, idempotency)


class Outbox:
    def __init__(self, tables: KitTables, service: str):
        self.table = tables.outbox
        self.source = f"/govmedia/{service}"
        self._wake = asyncio.Event()

    async def emit(self, session: AsyncSession, subject: str, payload: Message, about: str) -> str:
        """Record an event in the caller's transaction; `about` is the CloudEvents subject
        (the id of the entity the event is about). Returns the event id."""
        event_id = new_id()
        at = utcnow()
        headers = envelope_headers(event_id, subject, self.source, about, at)
        await session.execute(
            insert(self.table).values(
                event_id=event_id,
                subject=subject,
                headers=json.dumps(headers),
                payload=payload.SerializeToString(),
                created_at=at,
                attempts=0,
            )
        )
        return event_id

    def wake(self) -> None:
        """Tell the relay there is something new (call after the commit)."""
        self._wake.set()

    async def backlog(self, db: Database) -> int:
        async with db.session() as s:
            return (await s.execute(select(func.count()).select_from(self.table)
                                    .where(self.table.c.published_at.is_(None)))).scalar_one()

    async def relay_once(self, db: Database, js, limit: int = 500) -> int | None:
        """Publish up to `limit` unpublished events in order; return how many were confirmed,
        or None when another replica's relay holds this database's outbox right now."""
        if db.is_sqlite:
            # One machine; SQLite cannot turn a read into a write once another writer has
            # committed, so read, publish, then mark in a write transaction of its own.
            async with db.session() as s:
                rows = (await s.execute(self._unpublished(limit))).all()
            if not rows:
                return 0
            confirmed, failed = await self._publish(rows, js)
            async with db.transaction() as s:
                await self._mark(s, confirmed, failed)
            return len(confirmed)
        async with db.transaction() as s:
            # One relay at a time per database: replicas would otherwise publish the same rows
            # (deduplicated downstream, but twice the work) and interleave their order.
            if not (await s.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": RELAY_LOCK_KEY})).scalar():
                return None
            rows = (await s.execute(self._unpublished(limit))).all()
            if not rows:
                return 0
            confirmed, failed = await self._publish(rows, js)
            await self._mark(s, confirmed, failed)
        return len(confirmed)

    def _unpublished(self, limit: int):
        t = self.table
        return (select(t.c.seq, t.c.subject, t.c.headers, t.c.payload)
                .where(t.c.published_at.is_(None)).order_by(t.c.seq).limit(limit))

    async def _publish(self, rows, js) -> tuple[list[int], list[int]]:
        futures = []
        for row in rows:
            headers = json.loads(row.headers)
            with tracer.start_as_current_span(
                f"send {row.subject}",
                context=propagate.extract(headers),
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": row.subject,
                    "messaging.message.id": headers.get("ce-id", ""),
                },
            ):
                futures.append(await js.publish_async(row.subject, row.payload, headers=headers))
        results = await asyncio.gather(*futures, return_exceptions=True)
        confirmed = [row.seq for row, res in zip(rows, results) if not isinstance(res, BaseException)]
        failed = [row.seq for row, res in zip(rows, results) if isinstance(res, BaseException)]
        if failed:
            log.warning("outbox relay: %d events not confirmed, will retry", len(failed))
        return confirmed, failed

    async def _mark(self, s: AsyncSession, confirmed: list[int], failed: list[int]) -> None:
        t = self.table
        if confirmed:
            await s.execute(update(t).where(t.c.seq.in_(confirmed)).values(published_at=utcnow()))
        if failed:
            await s.execute(update(t).where(t.c.seq.in_(failed)).values(attempts=t.c.attempts + 1))

    async def run_relay(self, db: Database, bus, stop: asyncio.Event) -> None:
        """Relay until `stop`; wakes on `wake()` and polls once a second for safety."""
        while not stop.is_set():
            try:
                if bus.connected:
                    sent = await self.relay_once(db, bus.js)
                    if sent:
                        continue  # there may be more
                    if sent is None:  # another replica is relaying; ours may be next
                        await asyncio.sleep(0.05)
                        continue
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(1)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                pass

"""The kit's messaging against a real nats-server and a real SQLite database:
outbox → relay → JetStream → inbox-backed consumer → dead-letter subject."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.bus import Consumer, ConsumerRunner
from govmedia_kit.config import settings_for
from govmedia_kit.events import envelope_headers
from govmedia_kit.outbox import kit_tables
from govmedia_kit.db import utcnow
from govmedia_kit.runtime import Runtime, ServiceSpec


@pytest.fixture
async def rt(nats_server, tmp_path: Path):
    metadata = MetaData()
    tables = kit_tables(metadata)
    applied = Table("applied", metadata, Column("id", Integer, primary_key=True), Column("item_id", String(40)))
    spec = ServiceSpec(name="content", metadata=metadata, tables=tables, migrations_dir=tmp_path)
    runtime = Runtime(spec, settings_for("content", nats_url=nats_server.url, data_dir=tmp_path, max_deliver=3))
    async with runtime.db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await runtime.bus.connect()
    runtime.state["applied"] = applied
    yield runtime
    await runtime.bus.drain()
    await runtime.db.dispose()


def retracted(item_id: str) -> ev.ItemRetracted:
    return ev.ItemRetracted(item_id=item_id, version=1, unit_id="u1", reason="错误", retracted_by="r3")


async def stream_messages(rt: Runtime, subject: str) -> list:
    sub = await rt.bus.js.pull_subscribe(subject, durable=None, stream="GOVMEDIA_CONTENT")
    out = []
    try:
        while True:
            out += await sub.fetch(100, timeout=0.5)
    except Exception:
        pass
    await sub.unsubscribe()
    return out


async def test_outbox_relays_committed_events_once_with_envelope(rt):
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("submit"):
        async with rt.unit_of_work() as s:
            event_id = await rt.outbox.emit(s, "govmedia.content.item.retracted", retracted("i-1"), "i-1")
    with pytest.raises(RuntimeError):
        async with rt.unit_of_work() as s:
            await rt.outbox.emit(s, "govmedia.content.item.retracted", retracted("i-rolled-back"), "x")
            raise RuntimeError("the use case failed after emitting")
    assert await rt.outbox.relay_once(rt.db, rt.bus.js) == 1
    # A crash after publishing but before marking: the relay publishes again, JetStream de-duplicates.
    async with rt.db.transaction() as s:
        await s.execute(update(rt.spec.tables.outbox).values(published_at=None))
    assert await rt.outbox.relay_once(rt.db, rt.bus.js) == 1
    msgs = await stream_messages(rt, "govmedia.content.item.retracted")
    assert len(msgs) == 1
    h = msgs[0].headers
    assert h["ce-id"] == h["Nats-Msg-Id"] == event_id
    assert h["ce-type"] == "govmedia.content.item.retracted" and h["ce-source"] == "/govmedia/content"
    assert h["ce-subject"] == "i-1" and h["ce-specversion"] == "1.0" and h["ce-time"].endswith("Z")
    assert h["traceparent"].startswith("00-")
    body = ev.ItemRetracted()
    body.ParseFromString(msgs[0].data)
    assert body.item_id == "i-1"
    assert await rt.outbox.backlog(rt.db) == 0


async def _record(rt, session, event) -> None:
    msg = event.parse(ev.ItemRetracted)
    await session.execute(insert(rt.state["applied"]).values(item_id=msg.item_id))


async def count_applied(rt) -> int:
    async with rt.db.session() as s:
        return (await s.execute(select(func.count()).select_from(rt.state["applied"]))).scalar_one()


# Each test has its own subject: the session's nats-server keeps earlier tests' messages.


async def test_same_event_twice_is_applied_once(rt):
    subject = "govmedia.content.test.duplicated"
    headers = envelope_headers("evt-dup-1", subject, "/govmedia/content", "i-2", utcnow())
    payload = retracted("i-2").SerializeToString()
    # Two copies that escape the broker's de-duplication window (different Nats-Msg-Id).
    await rt.bus.js.publish(subject, payload, headers={**headers, "Nats-Msg-Id": "copy-1"})
    await rt.bus.js.publish(subject, payload, headers={**headers, "Nats-Msg-Id": "copy-2"})
    runner = ConsumerRunner(rt, rt.spec.tables.inbox, Consumer("test-applied", subject, _record), max_deliver=3)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(100):
        if await count_applied(rt) >= 1:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # time for the second copy
    stop.set()
    await task
    assert await count_applied(rt) == 1
    info = await rt.bus.js.consumer_info("GOVMEDIA_CONTENT", "test-applied")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_failing_handler_is_retried_then_dead_lettered(rt):
    subject = "govmedia.content.test.broken"
    calls = []

    async def broken(_rt, session, event):
        calls.append(event.id)
        await session.execute(insert(rt.state["applied"]).values(item_id="must-roll-back"))
        raise ValueError("cannot apply")

    headers = envelope_headers("evt-bad-1", subject, "/govmedia/content", "i-3", utcnow())
    await rt.bus.js.publish(subject, retracted("i-3").SerializeToString(), headers=headers)
    runner = ConsumerRunner(rt, rt.spec.tables.inbox, Consumer("test-broken", subject, broken), max_deliver=3)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    dlq = await rt.bus.js.pull_subscribe("govmedia.dlq.test-broken", durable=None, stream="GOVMEDIA_DLQ")
    dead = await dlq.fetch(1, timeout=20)
    await dlq.unsubscribe()
    stop.set()
    await task
    assert len(calls) == 3  # bounded: max_deliver tries, then the dead-letter subject
    assert dead[0].headers["ce-id"] == "evt-bad-1"
    assert "cannot apply" in dead[0].headers["x-dead-letter-reason"]
    assert await count_applied(rt) == 0  # every failed try rolled back


async def test_one_trace_from_request_through_the_bus_to_the_consumer(rt):
    """traceparent rides in the event headers: the relay's send span and the consumer's
    process span join the trace of the request that emitted the event."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from govmedia_kit.telemetry import setup_tracing

    exporter = InMemorySpanExporter()
    assert setup_tracing("content", span_processor=SimpleSpanProcessor(exporter))
    subject = "govmedia.content.test.traced"
    with trace.get_tracer("test").start_as_current_span("POST /v1/items/i-4/retract") as request_span:
        async with rt.unit_of_work() as s:
            await rt.outbox.emit(s, subject, retracted("i-4"), "i-4")
    assert await rt.outbox.relay_once(rt.db, rt.bus.js) == 1
    runner = ConsumerRunner(rt, rt.spec.tables.inbox, Consumer("test-traced", subject, _record), max_deliver=3)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(100):
        if any(s.name == f"process {subject}" for s in exporter.get_finished_spans()):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    spans = {s.name: s for s in exporter.get_finished_spans()}
    trace_id = request_span.get_span_context().trace_id
    send, process = spans[f"send {subject}"], spans[f"process {subject}"]
    assert send.context.trace_id == process.context.trace_id == trace_id
    assert process.parent.span_id == request_span.get_span_context().span_id
    assert send.kind == trace.SpanKind.PRODUCER and process.kind == trace.SpanKind.CONSUMER
    assert process.attributes["messaging.system"] == "nats"
    assert process.attributes["messaging.consumer.group.name"] == "test-traced"


async def test_streams_follow_the_replica_and_retention_settings(tmp_path, caplog):
    """NATS_STREAM_REPLICAS and the max ages shape every stream; a stream somebody changed by
    hand is set back; a replica count the server cannot hold is refused loudly, not hidden
    behind "unreachable"."""
    from nats.js.api import StreamConfig

    from govmedia_cli.stack import NatsServer
    from govmedia_kit.bus import Bus, StreamPolicy

    server = NatsServer.start(tmp_path / "nats")
    try:
        bus = Bus(server.url, "test", StreamPolicy(replicas=1, max_age_days=7, dlq_max_age_days=60))
        await bus.connect()
        info = await bus.js.stream_info("GOVMEDIA_DISPATCH")
        assert (info.config.num_replicas, info.config.max_age, info.config.duplicate_window) == (1, 7 * 86400, 120)
        assert (await bus.js.stream_info("GOVMEDIA_DLQ")).config.max_age == 60 * 86400
        await bus.js.update_stream(StreamConfig(name="GOVMEDIA_DISPATCH", subjects=["govmedia.dispatch.>"], max_age=60))
        await bus.ensure_streams()
        assert (await bus.js.stream_info("GOVMEDIA_DISPATCH")).config.max_age == 7 * 86400
        await bus.drain()

        # One server cannot hold three copies of a stream.
        three = Bus(server.url, "test-r3", StreamPolicy(replicas=3))
        stop = asyncio.Event()
        task = asyncio.create_task(three.connect(stop))
        for _ in range(200):
            if any("refused the platform's streams" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)
        assert any("refused the platform's streams" in r.getMessage() for r in caplog.records), caplog.text
        assert not three.connected
    finally:
        server.stop()


@pytest.mark.skipif(not __import__("tests.conftest", fromlist=["_PG"])._PG, reason="needs PostgreSQL")
async def test_two_replicas_relays_publish_each_event_once_and_in_order(rt):
    """Two relays over one PostgreSQL outbox (two replicas of a service): between them every
    event is published exactly once, in the order it was written."""
    from govmedia_kit.db import Database
    from govmedia_kit.outbox import Outbox
    from tests.conftest import drop_pg_databases, fresh_pg_databases

    urls = fresh_pg_databases(["content"])
    replicas = [Database(urls["content"]), Database(urls["content"])]
    try:
        async with replicas[0].engine.begin() as conn:
            await conn.run_sync(rt.spec.metadata.create_all)
        outbox = Outbox(rt.spec.tables, "content")
        subject = "govmedia.content.item.retracted"
        for batch in range(6):
            async with replicas[0].transaction() as s:
                for i in range(50):
                    await outbox.emit(s, subject, retracted(f"pg-{batch * 50 + i:03d}"), "x")
        sent = [0, 0]

        async def relay(n: int) -> None:
            while True:
                got = await outbox.relay_once(replicas[n], rt.bus.js, limit=40)
                if got == 0:
                    return
                sent[n] += got or 0
                await asyncio.sleep(0)

        await asyncio.gather(relay(0), relay(1))
        assert sum(sent) == 300, sent  # each row confirmed by exactly one of them
        msgs = [m for m in await stream_messages(rt, subject) if m.headers["ce-subject"] == "x"]
        ids = []
        for m in msgs:
            body = ev.ItemRetracted()
            body.ParseFromString(m.data)
            ids.append(body.item_id)
        assert ids[-300:] == [f"pg-{i:03d}" for i in range(300)]
    finally:
        for db in replicas:
            await db.dispose()
        drop_pg_databases(urls)


async def test_housekeeping_prunes_only_what_can_no_longer_be_needed(rt):
    """Published outbox rows past OUTBOX_KEEP_DAYS, inbox rows past the stream's max age and
    idempotency keys past 24 hours go; an unsent event stays however old it is."""
    from datetime import timedelta

    from govmedia_kit.housekeeping import prune_once

    t = rt.spec.tables
    now = utcnow()
    old, recent = now - timedelta(days=40), now - timedelta(hours=1)
    async with rt.db.transaction() as s:
        for n, (created, published) in enumerate([(old, old), (old, None), (recent, recent)]):
            await s.execute(insert(t.outbox).values(event_id=f"hk-{n}", subject="govmedia.content.hk", headers="{}",
                                                    payload=b"", created_at=created, published_at=published,
                                                    attempts=0))
        for n, at in enumerate([old, recent]):
            await s.execute(insert(t.inbox).values(consumer="hk", event_id=f"hk-{n}", processed_at=at))
        for n, at in enumerate([now - timedelta(hours=25), recent]):
            await s.execute(insert(t.idempotency).values(scope=f"hk-{n}", request_hash="x", status=200, body=b"",
                                                         content_type="", created_at=at))
    assert await prune_once(rt) == {"outbox": 1, "inbox": 1, "idempotency_keys": 1}
    async with rt.db.session() as s:
        assert sorted((await s.execute(select(t.outbox.c.event_id).where(t.outbox.c.event_id.like("hk-%"))))
                      .scalars()) == ["hk-1", "hk-2"]
        assert list((await s.execute(select(t.inbox.c.event_id).where(t.inbox.c.consumer == "hk"))).scalars()) == ["hk-1"]
        assert list((await s.execute(select(t.idempotency.c.scope))).scalars()) == ["hk-1"]
    assert await prune_once(rt) == {"outbox": 0, "inbox": 0, "idempotency_keys": 0}

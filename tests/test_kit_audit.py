"""govmedia_kit.audit: per-stream sequence numbers, the hash chain and its verification,
racing appends, and the triggers that make the table append-only, on SQLite and PostgreSQL."""
from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timezone

import pytest
from sqlalchemy import MetaData, insert, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from govmedia_kit.audit import AuditTrail, append_only_ddl, canonical_json, drop_append_only_ddl
from govmedia_kit.db import Database
from tests.conftest import BACKENDS, drop_pg_databases, fresh_pg_databases


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path):
    """A fresh database with only the audit table and its triggers."""
    urls = fresh_pg_databases(["audit"]) if request.param == "postgres" else {}
    db = Database(urls.get("audit") or f"sqlite+aiosqlite:///{tmp_path}/audit.db")
    metadata = MetaData()
    trail = AuditTrail(metadata)
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        for statement in append_only_ddl("audit_trail", db.engine.dialect.name):
            await conn.exec_driver_sql(statement)
    yield db, trail
    await db.dispose()
    drop_pg_databases(urls)


async def _append(db, trail, stream, action, **kw):
    async with db.transaction() as s:
        return await trail.append(s, stream, action, kw.pop("actor", "u1"), kw.pop("before", None),
                                  kw.pop("after", None), **kw)


async def _tamper(db, *statements) -> None:
    """What someone with database access could do: drop the triggers, then change history."""
    async with db.engine.begin() as conn:
        for statement in drop_append_only_ddl("audit_trail", db.engine.dialect.name):
            await conn.exec_driver_sql(statement)
        for statement in statements:
            await conn.execute(statement)


async def test_chain_sequence_and_verification(store):
    db, trail = store
    at = datetime(2026, 3, 2, 8, 30, 15, 123456, tzinfo=timezone.utc)
    first = await _append(db, trail, "item-1", "opened", actor="system", after={"review_id": "r1", "levels": [1, 2]},
                          at=at)
    second = await _append(db, trail, "item-1", "decided", before={"state": "in_review"},
                           after={"decision": "approve", "when": at, "note": "同意"})
    other = await _append(db, trail, "item-2", "opened", after={"x": 1})
    third = await _append(db, trail, "item-1", "approval_emitted", actor="system")

    assert [e["seq"] for e in (first, second, third)] == [1, 2, 3] and other["seq"] == 1
    assert first["prev_hash"] == "" and second["prev_hash"] == first["hash"] and third["prev_hash"] == second["hash"]
    assert other["prev_hash"] == ""  # each stream has its own chain
    # The hash is sha256(prev_hash + canonical JSON of what the entry records).
    body = canonical_json({"stream_id": "item-1", "seq": 1, "action": "opened", "actor": "system",
                           "at": "2026-03-02T08:30:15.123456Z", "before": None,
                           "after": {"review_id": "r1", "levels": [1, 2]}})
    assert first["hash"] == hashlib.sha256(body.encode()).hexdigest()
    assert first["at"] == "2026-03-02T08:30:15.123456Z"
    assert second["after"]["when"] == "2026-03-02T08:30:15.123456Z"  # stored as it was hashed

    async with db.session() as s:
        entries = await trail.entries(s, "item-1")
        assert entries == [first, second, third]
        assert [e["seq"] for e in await trail.entries(s, "item-1", after_seq=1, limit=1)] == [2]
        assert await trail.verify(s, "item-1") == {"ok": True, "entries": 3, "first_broken": None}
        assert await trail.verify(s, "nothing-here") == {"ok": True, "entries": 0, "first_broken": None}

    # Two entries cannot share a number in one stream.
    with pytest.raises(IntegrityError):
        async with db.transaction() as s:
            await s.execute(insert(trail.table).values(stream_id="item-1", seq=2, action="forged", actor="x",
                                                       at=at, prev_hash="", hash="0" * 64))


async def test_rows_cannot_be_changed_or_removed(store):
    db, trail = store
    await _append(db, trail, "item-1", "opened", after={"a": 1})
    t = trail.table
    for statement in (update(t).values(actor="someone-else"), t.delete()):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.transaction() as s:
                await s.execute(statement)
    async with db.session() as s:
        assert (await trail.entries(s, "item-1"))[0]["actor"] == "u1"
        assert (await trail.verify(s, "item-1"))["ok"]


async def test_tampering_shows_the_first_broken_link(store):
    db, trail = store
    for n in range(1, 5):
        await _append(db, trail, "item-1", f"step{n}", after={"n": n})
    t = trail.table
    # A changed row no longer matches its hash.
    await _tamper(db, update(t).where(t.c.stream_id == "item-1", t.c.seq == 2).values(after={"n": 20}))
    async with db.session() as s:
        assert await trail.verify(s, "item-1") == {"ok": False, "entries": 4,
                                                   "first_broken": {"seq": 2, "reason": "hash_mismatch"}}
    # Re-hashing the changed row breaks the link to the next one.
    async with db.session() as s:
        row2 = (await trail.entries(s, "item-1"))[1]
    from govmedia_kit.audit import entry_hash
    rehashed = entry_hash(row2["prev_hash"], "item-1", 2, row2["action"], row2["actor"], row2["at"], None, {"n": 20})
    await _tamper(db, update(t).where(t.c.stream_id == "item-1", t.c.seq == 2).values(hash=rehashed))
    async with db.session() as s:
        assert (await trail.verify(s, "item-1"))["first_broken"] == {"seq": 3, "reason": "prev_hash_mismatch"}
    # A removed row leaves a gap.
    await _tamper(db, t.delete().where(t.c.stream_id == "item-1", t.c.seq == 1))
    async with db.session() as s:
        assert (await trail.verify(s, "item-1"))["first_broken"] == {"seq": 2, "reason": "sequence_gap",
                                                                     "expected_seq": 1}


async def test_racing_appends_each_take_their_own_number(store):
    db, trail = store
    await _append(db, trail, "item-1", "opened")
    started = asyncio.Event()

    async def slow() -> dict:
        async with db.transaction() as s:
            entry = await trail.append(s, "item-1", "slow", "a", None, {"who": "slow"})
            started.set()
            await asyncio.sleep(0.4)  # holds its number, uncommitted, while the other one appends
            return entry

    async def fast() -> dict:
        await started.wait()
        async with db.transaction() as s:
            await s.execute(text("SELECT 1"))
            return await trail.append(s, "item-1", "fast", "b", None, {"who": "fast"})

    results = await asyncio.gather(slow(), fast(), *[_append(db, trail, "item-1", f"more{n}") for n in range(3)])
    assert sorted(e["seq"] for e in results) == [2, 3, 4, 5, 6]
    async with db.session() as s:
        assert await trail.verify(s, "item-1") == {"ok": True, "entries": 6, "first_broken": None}

"""The kit's database sessions: read-then-write use cases do not interleave on SQLite."""
from __future__ import annotations

import asyncio

from sqlalchemy import text

from govmedia_kit.db import Database, new_id, page


async def test_concurrent_read_then_write_transactions_do_not_lose_updates(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path}/race.db")
    async with db.transaction() as s:
        await s.execute(text("CREATE TABLE counter (n INTEGER)"))
        await s.execute(text("INSERT INTO counter VALUES (0)"))

    async def increment():
        async with db.transaction() as s:
            n = (await s.execute(text("SELECT n FROM counter"))).scalar_one()
            await asyncio.sleep(0.02)  # another use case would slip in here without the early lock
            await s.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})

    await asyncio.gather(*(increment() for _ in range(5)))
    async with db.session() as s:
        assert (await s.execute(text("SELECT n FROM counter"))).scalar_one() == 5
    await db.dispose()


def test_ids_sort_by_creation_and_page():
    ids = [new_id() for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    items, cursor = page(ids[:11], 10, key=lambda i: i)
    assert items == ids[:10] and cursor == ids[9]
    assert page(ids[:3], 10, key=lambda i: i) == (ids[:3], None)

"""Async SQLModel sessions over SQLite (embedded default) or PostgreSQL (asyncpg), and
Alembic migrations per service."""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import time
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession


def new_id() -> str:
    """A 24-hex-digit id that sorts by creation time, so `id > cursor` pages in order."""
    return f"{time.time_ns():016x}{secrets.token_hex(4)}"


def upsert_insert(session: AsyncSession, table):
    """INSERT with ON CONFLICT for the session's database (both dialects spell it the same)."""
    return pg_insert(table) if session.bind.dialect.name == "postgresql" else sqlite_insert(table)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything stored here is UTC. An aware moment in
    another zone (a client's +08:00) is the same moment in UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


class Database:
    def __init__(self, url: str):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # hide_parameters: a database error must not carry citizens' data or secrets into the logs.
        kwargs: dict = {"pool_pre_ping": True, "hide_parameters": True}
        if self.is_sqlite:
            kwargs = {"connect_args": {"timeout": 30}, "hide_parameters": True}
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        slow_ms = float(os.environ.get("GOVMEDIA_SLOW_SQL_MS") or 0)
        if slow_ms > 0:
            _log_slow_statements(self.engine, slow_ms)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work commits on success and rolls back on any error."""
        async with self._sessions() as session:
            async with session.begin():
                if self.is_sqlite:
                    # Take SQLite's write lock now, not at the first write: a read-then-write
                    # use case must not interleave with another one (PostgreSQL has FOR UPDATE).
                    await session.connection(execution_options={"sqlite_immediate": True})
                yield session

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def migrate(self, migrations_dir: Path) -> None:
        """Bring the schema to the newest Alembic revision of the service."""
        await asyncio.to_thread(upgrade, migrations_dir, self.url)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _log_slow_statements(engine: AsyncEngine, slow_ms: float) -> None:
    """GOVMEDIA_SLOW_SQL_MS: log each statement that took longer (its text, never its
    parameters), to find what a slow use case waits on."""
    log = logging.getLogger("govmedia_kit.db.slow")

    def before(conn, _cursor, statement, _parameters, _context, _many):
        conn.info.setdefault("started", []).append(time.perf_counter())
        conn.info.setdefault("first", statement)

    def after(conn, _cursor, statement, _parameters, _context, _many):
        took = (time.perf_counter() - conn.info["started"].pop()) * 1000
        if took >= slow_ms:
            log.warning("slow statement (%.0f ms): %s", took, " ".join(statement.split())[:300])

    def begun(conn):
        conn.info["began"] = time.perf_counter()
        conn.info.pop("first", None)

    def ended(conn):
        began = conn.info.pop("began", None)
        if began is not None and (took := (time.perf_counter() - began) * 1000) >= slow_ms:
            first = conn.info.get("first") or ""
            log.warning("slow transaction (%.0f ms), first statement: %s", took, " ".join(first.split())[:200])

    event.listen(engine.sync_engine, "before_cursor_execute", before)
    event.listen(engine.sync_engine, "after_cursor_execute", after)
    event.listen(engine.sync_engine, "begin", begun)
    event.listen(engine.sync_engine, "commit", ended)
    event.listen(engine.sync_engine, "rollback", ended)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # The driver's own implicit BEGIN is off; `_sqlite_begin` emits the right one.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; the busy timeout waits instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("sqlite_immediate") else "BEGIN")


def alembic_config(migrations_dir: Path, url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(migrations_dir: Path, url: str) -> None:
    command.upgrade(alembic_config(migrations_dir, url), "head")


def run_migrations(metadata) -> None:
    """The body of every service's migrations/env.py: online migrations on an async engine."""
    from alembic import context

    url = context.config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]

    def do_run(connection) -> None:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Replicas starting together (and the init containers of a rollout) must not
                # migrate at once: the others wait here, then find the schema at head. The
                # lock goes with the transaction, which PostgreSQL's DDL shares.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()

    async def run() -> None:
        engine = create_async_engine(url)
        async with engine.connect() as conn:
            await conn.run_sync(do_run)
            await conn.commit()
        await engine.dispose()

    with _sqlite_migration_lock(url):
        asyncio.run(run())


# An arbitrary constant of this platform's own: every service's migrations take it in their own database.
MIGRATION_LOCK_KEY = 0x676F766D6564  # "govmed"


@contextmanager
def _sqlite_migration_lock(url: str):
    """SQLite has no advisory locks: processes sharing one database file on one machine
    take an exclusive lock on a file beside it instead."""
    path = url.partition(":///")[2] if url.startswith("sqlite") else ""
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def page(items: list, limit: int, key=lambda item: item.id) -> tuple[list, str | None]:
    """Trim a list fetched with `limit + 1` rows to one page and its next cursor."""
    if len(items) > limit:
        items = items[:limit]
        return items, key(items[-1])
    return items, None

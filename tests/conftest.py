"""Fixtures shared by the whole suite: a real nats-server, real databases (SQLite, and
PostgreSQL when one answers on 127.0.0.1:5432), and the services as real processes."""
from __future__ import annotations

import asyncio
import json
import concurrent.futures
import os
import secrets
from pathlib import Path

import pytest

from govmedia_cli.stack import NatsServer, Stack, port_open

PG_HOST, PG_PORT = os.environ.get("TEST_PG_HOST", "127.0.0.1"), int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")


def postgres_available() -> bool:
    if os.environ.get("TEST_SKIP_POSTGRES") == "1" or not port_open(PG_HOST, PG_PORT):
        return False
    try:
        _run(_pg_exec("SELECT 1"))
        return True
    except Exception:
        return False


def _run(coro):
    """Run a coroutine to completion from sync code, even inside an async test's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_PG = postgres_available()
BACKENDS = ["sqlite"] + (["postgres"] if _PG else [])


def fresh_pg_databases(services) -> dict[str, str]:
    """One new PostgreSQL database per service (each service owns its own database)."""
    tag = secrets.token_hex(3)
    urls = {}
    for name in services:
        db = f"gm_test_{tag}_{name}"
        _run(_pg_exec(f'CREATE DATABASE "{db}"'))
        urls[name] = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"
    return urls


def drop_pg_databases(urls: dict[str, str]) -> None:
    for url in urls.values():
        db = url.rsplit("/", 1)[1]
        try:
            _run(_pg_exec(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        except Exception:
            pass


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory):
    """A real nats-server with JetStream on a free port, for tests that talk to the bus directly."""
    server = NatsServer.start(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(params=BACKENDS)
def db_backend(request) -> str:
    return request.param


# Argon2id at OWASP's floor instead of the default RFC 9106 cost: the suite signs in
# hundreds of times, and at 0.25 s of CPU each that was a tenth of its run on 2 cores.
CHEAPER_PASSWORD_HASHING = {"ACCOUNT_PASSWORD_HASH_MEMORY_KIB": "19456", "ACCOUNT_PASSWORD_HASH_TIME_COST": "2",
                            "ACCOUNT_PASSWORD_HASH_PARALLELISM": "1"}


def make_stack(tmp_path: Path, backend: str, only=None) -> Stack:
    from govmedia_kit.config import SERVICES

    names = only or SERVICES
    urls = fresh_pg_databases(names) if backend == "postgres" else {}
    stack = Stack(data_dir=tmp_path / "stack", free_ports=True, database_urls=urls,
                  extra_env=dict(CHEAPER_PASSWORD_HASHING))
    stack._pg_urls = urls  # type: ignore[attr-defined]
    return stack


@pytest.fixture
def stack_factory(tmp_path):
    """Start some or all services as processes: `stack = stack_factory("sqlite", only=("account", "content"))`."""
    made: list[Stack] = []

    def start(backend: str = "sqlite", only=None, env: dict | None = None, secure_nats: bool = False,
              **kwargs) -> Stack:
        """`env`: extra variables for the service processes (e.g. shorter intervals);
        `secure_nats`: nats-server in operator mode, each service its own user (as `make run`)."""
        from govmedia_kit.config import SERVICES

        stack = make_stack(tmp_path / f"s{len(made)}", backend, only)
        stack.extra_env.update(env or {})
        stack.secure_nats = secure_nats
        made.append(stack)
        stack.start(only=tuple(only or SERVICES), **kwargs)
        return stack

    yield start
    for stack in made:
        stack.stop()
        drop_pg_databases(stack._pg_urls)  # type: ignore[attr-defined]


@pytest.fixture
def receiver():
    """Simulated webhook clients on a local port (tests/webhook_receiver.py)."""
    from tests.webhook_receiver import Receiver

    with Receiver() as r:
        yield r


@pytest.fixture
def calendar_file(tmp_path, monkeypatch):
    """chinesecalendar 1.11 ends with 2026: 2027 from the seed file (`GOVMEDIA_CALENDAR_FILE`), so
    deadlines the tests compute are official and the same in the services and the test process.
    Synthetic TEST data (New Year's Day only), not the official 2027 notice."""
    from govmedia_kit import workdays

    path = tmp_path / "calendar-test.json"
    path.write_text(json.dumps({"2027": {"holidays": ["2027-01-01"], "workdays": []}}), encoding="utf-8")
    monkeypatch.setenv(workdays.CALENDAR_FILE_ENV, str(path))
    return path

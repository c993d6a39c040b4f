"""Small helpers for tests that talk to running services over HTTP."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import asyncpg
import httpx
import nats
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine

from govmedia_cli.stack import TLS, Stack

DEMO_PASSWORD = "demo-pass-2026"


def login(stack: Stack, username: str, password: str = DEMO_PASSWORD) -> str:
    r = httpx.post(f"{stack.services['account'].base_url}/v1/auth/token",
                   data={"username": username, "password": password}, timeout=10, verify=TLS)
    r.raise_for_status()
    return r.json()["access_token"]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def client(stack: Stack, service: str, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=stack.services[service].base_url, headers=auth(token) if token else {}, timeout=15,
                        verify=TLS)


def client_token(stack: Stack, account: dict) -> str:
    """A matrix client's token (client credentials of a stream account)."""
    r = httpx.post(f"{stack.services['account'].base_url}/v1/auth/token",
                   data={"grant_type": "client_credentials", "client_id": account["id"],
                         "client_secret": account["client_secret"]}, verify=TLS)
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def eventually(check, timeout: float = 20.0, interval: float = 0.1):
    """Poll `check()` until it returns a truthy value (events take a moment to flow)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["code"] == code, body
    return body


async def service_db(stack: Stack, service: str, *statements: str) -> list:
    """Run SQL against a service's own database, behind its back (the rows of the last statement)."""
    url = stack._pg_urls.get(service)  # type: ignore[attr-defined]
    if url is None:
        db = sqlite3.connect(stack.data_dir / f"{service}.db", timeout=30)
        try:
            rows = []
            for statement in statements:
                rows = db.execute(statement).fetchall()
            db.commit()
            return rows
        finally:
            db.close()
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = []
        async with conn.transaction():
            for statement in statements:
                rows = await conn.fetch(statement)
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def service_insert(stack: Stack, service: str, table, rows: list[dict], chunk: int = 2000) -> None:
    """Bulk-insert rows into a table of a service's own database (read models a test seeds
    at a scale the bus would take minutes to fill)."""
    url = stack._pg_urls.get(service) or f"sqlite+aiosqlite:///{stack.data_dir / f'{service}.db'}"  # type: ignore[attr-defined]
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for start in range(0, len(rows), chunk):
                await conn.execute(insert(table), rows[start:start + chunk])
    finally:
        await engine.dispose()


def db_dialect(stack: Stack, service: str) -> str:
    return "postgresql" if service in stack._pg_urls else "sqlite"  # type: ignore[attr-defined]


async def bus_messages(stack: Stack, subject: str, stream: str) -> list:
    """Every message on `subject` in `stream` so far: fetched by a fresh consumer until the
    stream has nothing more for three seconds."""
    nc = await stack.connect_bus()
    try:
        sub = await nc.jetstream().pull_subscribe(subject, stream=stream)
        got = []
        while True:
            try:
                got += await sub.fetch(200, timeout=3)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                return got
    finally:
        await nc.close()

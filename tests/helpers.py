"""Small helpers for tests that talk to running services over HTTP."""
from __future__ import annotations

import time

import httpx

from govmedia_cli.stack import Stack

DEMO_PASSWORD = "demo-pass-2026"


def login(stack: Stack, username: str, password: str = DEMO_PASSWORD) -> str:
    r = httpx.post(f"{stack.services['account'].base_url}/v1/auth/token",
                   data={"username": username, "password": password}, timeout=10)
    r.raise_for_status()
    return r.json()["access_token"]


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def client(stack: Stack, service: str, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=stack.services[service].base_url, headers=auth(token) if token else {}, timeout=15)


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

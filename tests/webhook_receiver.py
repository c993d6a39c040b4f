"""A simulated matrix of webhook clients: one HTTP server, one path per client.

Each client checks DESIGN.md §6 like a real one would: CloudEvents structured JSON, the
HMAC-SHA256 signature over `X-Timestamp + "." + body` with its own secret, a timestamp at
most five minutes off. It records what it accepted (de-duplicated by event id, as a real
client must) and can be told to fail: `POST /control/{client}` with `{"status": 500,
"times": 2}` or `{"delay": 3}`. Run alone with `python -m tests.webhook_receiver --port N`.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def client_secret(client: str) -> str:
    """The secret each simulated client was registered with."""
    return f"whsec-{client}-0123456789abcdef"


class Matrix:
    def __init__(self):
        self.accepted: dict[str, list[dict]] = defaultdict(list)  # client → events, first copies only
        self.seen_ids: dict[str, set[str]] = defaultdict(set)
        self.attempts: dict[str, int] = defaultdict(int)
        self.rejected: list[str] = []
        self.behaviour: dict[str, dict] = {}
        self.first_at: dict[str, float] = {}

    def holds(self, client: str) -> set[str]:
        """Items the client shows now: published and not killed (a kill always wins)."""
        shown, killed = set(), set()
        for e in self.accepted[client]:
            item = e["data"]["item_id"]
            (killed if e["type"].endswith(".retracted") else shown).add(item)
        return shown - killed

    async def hook(self, request: Request) -> Response:
        client = request.path_params["client"]
        self.attempts[client] += 1
        body = await request.body()
        b = self.behaviour.get(client)
        if b:
            if b.get("delay"):
                await asyncio.sleep(b["delay"])
            if b.get("status") and b.get("times", 1) > 0:
                b["times"] = b.get("times", 1) - 1
                return Response(status_code=b["status"])
        ts = request.headers.get("x-timestamp", "")
        sig = request.headers.get("x-signature-256", "")
        expected = "sha256=" + hmac.new(client_secret(client).encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, expected) or not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            self.rejected.append(client)
            return Response(status_code=401)
        if request.headers.get("content-type", "").split(";")[0] != "application/cloudevents+json":
            self.rejected.append(client)
            return Response(status_code=415)
        event = json.loads(body)
        if event["id"] not in self.seen_ids[client]:
            self.seen_ids[client].add(event["id"])
            self.accepted[client].append(event)
            self.first_at.setdefault(f"{client}:{event['type']}:{event['data']['item_id']}", time.time())
        return Response(status_code=204)

    async def control(self, request: Request) -> Response:
        self.behaviour[request.path_params["client"]] = await request.json()
        return Response(status_code=204)

    async def state(self, _request: Request) -> Response:
        return JSONResponse({"accepted": self.accepted, "attempts": self.attempts, "rejected": self.rejected,
                             "first_at": self.first_at})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/hook/{client}", self.hook, methods=["POST"]),
            Route("/control/{client}", self.control, methods=["POST"]),
            Route("/state", self.state, methods=["GET"]),
        ])


class ReceiverThread:
    """The receiver inside a test process, on its own event loop thread."""

    def __init__(self, port: int):
        self.port = port
        self.matrix = Matrix()
        self.server = uvicorn.Server(uvicorn.Config(self.matrix.app(), host="127.0.0.1", port=port,
                                                    log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def url(self, client: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{client}"

    def __enter__(self) -> "ReceiverThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("webhook receiver did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc) -> None:
        self.server.should_exit = True
        self.thread.join(5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(Matrix().app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                lifespan="off")

"""Simulated webhook clients for `make bench-dispatch`: one process, one port, many clients,
each reached at `/h/<name>/ok` and checking every request as a real client must (DESIGN.md
§6): CloudEvents structured JSON, a timestamp at most five minutes off, and the HMAC-SHA256
signature over `X-Timestamp + "." + body` with its own secret (`client_secret(name)`); then
200, on a keep-alive HTTP/1.1 connection. The checks of tests/webhook_receiver.py, on
asyncio's Protocol API instead of a thread per connection and `http.server`'s parsing: the
receivers share the 2-core machine with dispatch, and at ~0.5 ms of CPU a request they cost
as much as dispatch itself.

    python bench/webhook_clients.py --port N
GET /state: {"events": {name: [[type, item_id, arrival (time.time())], …]}, "errors": [...]}.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent)]

from govmedia_kit.collector import tune_gc  # noqa: E402
from tests.webhook_receiver import client_secret  # noqa: E402

REASONS = {200: b"OK", 401: b"Unauthorized", 404: b"Not Found"}
CONTENT_TYPE = "application/cloudevents+json"


class Clients:
    def __init__(self):
        self.events: dict[str, list] = defaultdict(list)
        self.errors: list[str] = []
        self.keys: dict[str, bytes] = {}

    def post(self, path: str, headers: dict[str, str], body: bytes) -> int:
        parts = path.split("/")  # "", "h", name, mode
        if len(parts) != 4 or parts[1] != "h":
            return 404
        name = parts[2]
        key = self.keys.get(name)
        if key is None:
            key = self.keys[name] = client_secret(name).encode()
        ts = headers.get("x-timestamp", "")
        problem = None
        if headers.get("content-type") != CONTENT_TYPE:
            problem = f"content type {headers.get('content-type')}"
        elif not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            problem = f"timestamp {ts!r}"
        else:
            expected = "sha256=" + hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(headers.get("x-signature-256", ""), expected):
                problem = "signature"
        if problem:
            self.errors.append(f"{name}: {problem}")
            return 401
        event = json.loads(body)
        self.events[name].append([event["type"], event["data"]["item_id"], time.time()])
        return 200

    def state(self) -> bytes:
        return json.dumps({"events": self.events, "errors": self.errors}).encode()


class Connection(asyncio.Protocol):
    def __init__(self, clients: Clients):
        self.clients = clients
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:  # every complete request in the buffer (a client may pipeline)
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
            payload = b""
            if method == "POST":
                status = self.clients.post(path, headers, body)
            elif method == "GET" and path == "/state":
                status, payload = 200, self.clients.state()
            else:
                status = 404
            self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n\r\n%s"
                                 % (status, REASONS[status], len(payload), payload))


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    tune_gc()  # collected as the services are
    clients = Clients()
    server = await asyncio.get_running_loop().create_server(lambda: Connection(clients), "127.0.0.1", args.port,
                                                            backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass

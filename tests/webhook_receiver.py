"""Simulated matrix clients behind one local HTTP port, for the tests and the benchmarks.

Each client `name` is reached at `/h/<name>/<mode>` and checks every request as a real
client must (DESIGN.md §6): CloudEvents structured JSON, a timestamp at most five minutes
off, and the HMAC-SHA256 signature over `X-Timestamp + "." + body` with its own secret
(registered in `secrets`, else `client_secret(name)`). Modes: `ok`, `fail<N>` (500 for
the first N calls), `gone` (410), `slow<S>` (answers after S seconds), `hang` (answers only
when the receiver closes: the sender times out). `overrides[name] = mode` replaces the
mode in the URL from then on (a dead client coming back). `max_in_flight` is the most
requests the receiver (one endpoint, host:port) had in hand at once.

Every accepted request is recorded, copies included, so tests can count retries; `holds`
is what a client would show (de-duplicated by event id, a kill always winning).
Alone: `python -m tests.webhook_receiver --port N` (GET /state gives what was received, and when).
"""
from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def client_secret(name: str) -> str:
    """The secret a simulated client uses unless the test registered another."""
    return f"whsec-{name}-0123456789abcdef"


class Receiver:
    def __init__(self, port: int = 0):
        self.secrets: dict[str, str] = {}
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.times: dict[str, list[float]] = defaultdict(list)  # when each event arrived (the benchmarks)
        self.headers: dict[str, list[dict]] = defaultdict(list)  # each accepted request's headers (lower-case)
        self.errors: list[str] = []
        self.overrides: dict[str, str] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real client's server would

            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.split("/", 3)
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                try:
                    status = receiver.handle(parts[2], parts[3], self.headers, raw) if len(parts) == 4 else 404
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1
                self._answer(status)

            def do_GET(self):
                if self.path != "/state":
                    return self._answer(404)
                with receiver.lock:
                    body = json.dumps({"events": receiver.events, "times": receiver.times,
                                       "errors": receiver.errors}).encode()
                self._answer(200, body)

            def _answer(self, status: int, body: bytes = b""):
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the sender went away while we slept (the crash tests)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_port

    def url(self, name: str, mode: str = "ok") -> str:
        return f"http://127.0.0.1:{self.port}/h/{name}/{mode}"

    def handle(self, name: str, mode: str, headers, raw: bytes) -> int:
        ts = headers.get("X-Timestamp", "")
        secret = self.secrets.get(name) or client_secret(name)
        expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
        problem = None
        if headers.get("Content-Type") != "application/cloudevents+json":
            problem = f"content type {headers.get('Content-Type')}"
        elif not ts.isdigit() or abs(time.time() - int(ts)) > 300:
            problem = f"timestamp {ts!r}"
        elif not hmac.compare_digest(headers.get("X-Signature-256", ""), expected):
            problem = "signature"
        if problem:
            with self.lock:
                self.errors.append(f"{name}: {problem}")
            return 401
        with self.lock:
            self.events[name].append(json.loads(raw))
            self.times[name].append(time.time())
            self.headers[name].append({k.lower(): v for k, v in headers.items()})
            calls = len(self.events[name])
            mode = self.overrides.get(name, mode)
        if mode == "hang":
            self.closing.wait(60)
            return 503
        if mode == "gone":
            return 410
        if mode.startswith("fail") and calls <= int(mode[4:]):
            return 500
        if mode.startswith("slow"):
            time.sleep(float(mode[4:]))
        return 200

    def got(self, name: str, kind: str = "published") -> list[dict]:
        """Every request of that kind the client accepted, copies included."""
        with self.lock:
            return [e for e in self.events[name] if e["type"].endswith(kind)]

    def holds(self, name: str) -> set[str]:
        """The items the client shows now: published and not killed."""
        with self.lock:
            events = list(self.events[name])
        shown = {e["data"]["item_id"] for e in events if e["type"].endswith(".published")}
        killed = {e["data"]["item_id"] for e in events if e["type"].endswith(".retracted")}
        return shown - killed

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    receiver = Receiver(parser.parse_args().port)
    try:
        receiver.thread.join()
    except KeyboardInterrupt:
        receiver.close()

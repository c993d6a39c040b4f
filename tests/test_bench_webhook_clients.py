"""The benchmark's simulated webhook clients (bench/webhook_clients.py) check what a real
client checks: a request dispatch signs is taken, and one whose signature, timestamp or
content type is wrong is refused and noted, so `make bench-dispatch` cannot count a
delivery no real client would accept."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx

from govmedia_cli.stack import ROOT, free_port, port_open
from services.dispatch.domain import cloud_event, encode, signature
from tests.helpers import eventually
from tests.webhook_receiver import client_secret

CE = "application/cloudevents+json"


def test_bench_webhook_clients_take_signed_events_and_refuse_the_rest():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "webhook_clients.py"), "--port", str(port)], cwd=ROOT)
    try:
        eventually(lambda: port_open("127.0.0.1", port), timeout=20)
        url = f"http://127.0.0.1:{port}"
        body = encode(cloud_event("d1", "kill", "item-1", datetime.now(timezone.utc), {"item_id": "item-1"}))
        now = str(int(time.time()))

        def post(name: str, *, ts: str = now, sig: str | None = None, content_type: str = CE) -> int:
            headers = {"Content-Type": content_type, "X-Timestamp": ts,
                       "X-Signature-256": sig or signature(client_secret(name), ts, body)}
            return http.post(f"{url}/h/{name}/ok", content=body, headers=headers).status_code

        with httpx.Client(timeout=10) as http:  # one keep-alive connection, as dispatch keeps
            assert post("c1") == 200
            assert post("c2", sig=signature(client_secret("c1"), now, body)) == 401  # another client's secret
            assert post("c3", ts=str(int(time.time()) - 600)) == 401  # ten minutes old
            assert post("c4", content_type="application/json") == 401
            assert http.post(f"{url}/elsewhere", content=b"{}").status_code == 404
            state = http.get(f"{url}/state").json()
        assert [kind for kind, item, _ in state["events"]["c1"]] == ["govmedia.dispatch.item.retracted"]
        assert state["events"]["c1"][0][1] == "item-1"
        assert set(state["events"]) == {"c1"}
        assert [e.split(":")[0] for e in state["errors"]] == ["c2", "c3", "c4"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)

"""`make bench-spine`: one item pushed to 200 webhook clients, then retracted.

Starts the whole platform (five processes, SQLite, its own nats-server) and a receiver
process simulating 200 matrix clients that verify signatures like real ones. Measures,
from the last review approval, the time until dispatch holds an acknowledgement from every
client; and from the retraction request, the time until every client acknowledged the kill.
Prints, as its last line:
BENCH spine clients=200 push_all_acked_s=<float> kill_all_acked_s=<float>
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia_cli.stack import ROOT as _ROOT, Stack, free_port, port_open  # noqa: E402
from tests.webhook_receiver import client_secret  # noqa: E402

CHECKS = {"policy": True, "wording": True, "secrecy": True, "law": True}


def token(base: str, username: str) -> dict:
    r = httpx.post(f"{base}/v1/auth/token", data={"username": username, "password": "demo-pass-2026"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"bench: timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--keep", type=Path, help="keep databases and logs here for inspection")
    args = parser.parse_args()
    n = args.clients
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(data_dir=args.keep or Path(tmp), free_ports=True)
        # The simulated clients share one host:port, which dispatch would otherwise treat as
        # one endpoint (8 requests in flight, one breaker); real clients have their own.
        stack.extra_env.update({"DISPATCH_ENDPOINT_CONCURRENCY": "64", "DISPATCH_BREAKER_FAILURES": "1000"})
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-m", "tests.webhook_receiver", "--port", str(port)], cwd=_ROOT)
        try:
            stack.start()
            wait_for(lambda: port_open("127.0.0.1", port), 10, "the receiver")
            acc, con, rev, dis = (stack.services[s].base_url for s in ("account", "content", "review", "dispatch"))
            ops = token(acc, "ops")
            with httpx.Client(timeout=30) as http:
                unit_id = http.get(f"{acc}/v1/units", headers=ops).json()["items"][0]["id"]
                # 200 app clients of one unit: an exception to "one account per unit per platform".
                http.post(f"{acc}/v1/units/{unit_id}/platform-exceptions", headers=ops,
                          json={"platform": "app", "reason": "基准测试"}).raise_for_status()
                last = None
                for i in range(n):
                    r = http.post(f"{acc}/v1/accounts", headers=ops, json={
                        "unit_id": unit_id, "platform": "app", "name": f"示范省客户端{i}", "handle": f"bench-{i}",
                        "opened_on": "2025-01-01", "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"},
                        "delivery": {"mode": "webhook", "url": f"http://127.0.0.1:{port}/h/c{i}/ok",
                                     "secret": client_secret(f"c{i}")}})
                    r.raise_for_status()
                    last = r.json()["id"]
                # the account events reach dispatch's read model, the last one last
                wait_for(lambda: http.get(f"{dis}/v1/endpoints/{last}", headers=ops).status_code == 200, 60,
                         "dispatch to know every account")
                editor = token(acc, "editor")
                item = http.post(f"{con}/v1/drafts", headers=editor, json={
                    "title": "基准测试稿件", "body": "正文" * 200, "targets": {"scope": "all"}}).json()["id"]
                http.post(f"{con}/v1/drafts/{item}/submit", headers=editor).raise_for_status()
                review = wait_for(lambda: http.get(f"{rev}/v1/reviews", headers=ops, params={"item_id": item})
                                  .json()["items"], 30, "the review")[0]
                for level in (1, 2, 3):
                    r = http.post(f"{rev}/v1/reviews/{review['id']}/decisions", headers=token(acc, f"reviewer{level}"),
                                  json={"decision": "approve", "comment": "同意", "checks": CHECKS})
                    r.raise_for_status()
                pushed_at = time.perf_counter()
                pub = wait_for(lambda: (p := http.get(f"{dis}/v1/publications/{item}", headers=ops)).status_code == 200
                               and p.json()["counts"]["acknowledged"] == n and p.json(), 300, "every publish ack")
                push_s = time.perf_counter() - pushed_at
                assert pub["targets"] == n, pub
                retracted_at = time.perf_counter()
                http.post(f"{con}/v1/items/{item}/retract", headers=token(acc, "reviewer3"),
                          json={"reason": "基准测试撤稿"}).raise_for_status()
                done = wait_for(lambda: (r := http.get(f"{dis}/v1/retractions/{item}", headers=ops)).status_code == 200
                                and r.json()["completed_at"] and r.json(), 300, "every kill ack")
                kill_s = time.perf_counter() - retracted_at
                assert done["confirmed"] == n, done
                state = http.get(f"http://127.0.0.1:{port}/state").json()
                got = sum(1 for c in range(n) if len(state["events"].get(f"c{c}", [])) == 2)
                print(f"clients that got publish+kill once each: {got}/{n}; refused requests: {len(state['errors'])}")
        finally:
            stack.stop()
            receiver.terminate()
            receiver.wait(10)
    print(f"BENCH spine clients={n} push_all_acked_s={push_s:.3f} kill_all_acked_s={kill_s:.3f}")


if __name__ == "__main__":
    main()

"""`make bench-dispatch`: one item pushed to 10,000 matrix clients and then retracted, once with
stream clients and once with webhook clients, the clients simulated in separate processes.

For each mode: the account and dispatch services as processes (SQLite, their own
nats-server); 10,000 accounts written straight into dispatch's read model (what 10,000
`govmedia.account.account.activated` events would leave there; the account service's
own ledger is not what is measured); the approval and the retraction published to
JetStream as review and content would. Stream clients get tokens signed with the account
service's key as its client-credentials grant would sign them (the grant is not what is
measured either).

- stream: `--stream-procs` processes (bench/stream_clients.py), each holding its share of
  the `Connect` streams and acknowledging every event on its stream as it arrives.
- webhook: `--webhook-procs` receiver processes (bench/webhook_clients.py) that verify
  every signature; the clients share their processes' ports, so dispatch's per-endpoint
  limit is raised to its global concurrency for the run (real clients have their own hosts).

Figures: push_all_acked_s, from publishing the approval to dispatch announcing
(`govmedia.dispatch.deliveries.acknowledged`) an acknowledgement from every client;
kill_all_acked_s, from publishing the retraction to dispatch announcing it complete
(`govmedia.dispatch.retraction.completed`: every kill acknowledged), then checked against
`GET /v1/retractions/{item}`; kill_p99_ms, the 99th percentile over clients of the time from
the retraction to the kill's arrival at the client; dispatch_rss_mb, dispatch's peak
resident memory (VmHWM; with `--dispatch-replicas N`, the largest of the N processes, the
stream clients spread over them). Prints, as its last lines:
BENCH dispatch mode=stream clients=10000 push_all_acked_s=… kill_all_acked_s=… kill_p99_ms=… dispatch_rss_mb=…
BENCH dispatch mode=webhook clients=10000 push_all_acked_s=… kill_all_acked_s=… kill_p99_ms=… dispatch_rss_mb=…
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import jwt
import nats
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia.events.v1 import events_pb2 as ev  # noqa: E402
from govmedia_cli.stack import Stack, free_port, port_open  # noqa: E402
from govmedia_kit.db import new_id  # noqa: E402
from govmedia_kit.events import envelope_headers  # noqa: E402
from bench.procstat import cpu_s, rss_peak_mb  # noqa: E402
from govmedia_kit.auth import PLATFORM_AUDIENCE  # noqa: E402
from services.account.models import SigningKey  # noqa: E402
from services.account.tokens import install_key_sealer  # noqa: E402
from services.dispatch.models import Account  # noqa: E402
from tests.webhook_receiver import client_secret  # noqa: E402

ISSUER = "govmedia-account"


def wait_for(check, timeout: float, what: str, every: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"bench: timed out waiting for {what}")


def publish(nats_url: str, subject: str, message, about: str) -> float:
    """Publish one event as its producer would; returns the moment JetStream took it."""
    async def go() -> float:
        nc = await nats.connect(nats_url)
        try:
            headers = envelope_headers(new_id(), subject, "/govmedia/bench", about, datetime.now(timezone.utc))
            await nc.jetstream().publish(subject, message.SerializeToString(), headers=headers)
            return time.monotonic()
        finally:
            await nc.close()
    return asyncio.run(go())


class BusWatch:
    """What dispatch announces on the bus, as ops' tooling would watch it (a thread of its
    own): acknowledged publishes per item, and the moment each retraction is complete.
    Polling dispatch's REST views every few milliseconds instead took ~5 % of the CPU of the
    process being measured."""

    ACKNOWLEDGED, COMPLETED = "govmedia.dispatch.deliveries.acknowledged", "govmedia.dispatch.retraction.completed"

    def __init__(self, nats_url: str):
        # item → its publishes' deliveries announced acknowledged (a set: a core subscription sees
        # an event each time it is published, and the outbox may publish one twice, which
        # JetStream's de-duplication keeps out of the stream but not from core subscribers)
        self.acked: defaultdict[str, set[str]] = defaultdict(set)
        self.completed: dict[str, float] = {}  # item → time.monotonic() of its completion's arrival
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._watch(nats_url),),
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("bench: could not subscribe to dispatch's events")

    async def _watch(self, nats_url: str) -> None:
        self._stop = asyncio.Event()
        nc = await nats.connect(nats_url)

        async def acknowledged(msg) -> None:
            event = ev.DeliveriesAcknowledged()
            event.ParseFromString(msg.data)
            with self._lock:
                for d in event.deliveries:
                    if d.kind == "publish":
                        self.acked[d.item_id].add(d.delivery_id)

        async def completed(msg) -> None:
            event = ev.RetractionCompleted()
            event.ParseFromString(msg.data)
            with self._lock:
                self.completed.setdefault(event.item_id, time.monotonic())

        await nc.subscribe(self.ACKNOWLEDGED, cb=acknowledged)
        await nc.subscribe(self.COMPLETED, cb=completed)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.close()

    def acknowledged(self, item: str) -> int:
        with self._lock:
            return len(self.acked.get(item, ()))

    def completed_at(self, item: str) -> float | None:
        with self._lock:
            return self.completed.get(item)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def seed_accounts(stack: Stack, n: int, mode: str, urls: list[str]) -> list[str]:
    """Dispatch's read model of n active accounts of the demo unit."""
    ids = [new_id() for _ in range(n)]
    rows = []
    for i, account_id in enumerate(ids):
        url = f"{urls[i % len(urls)]}/h/c{i}/ok" if mode == "webhook" else None
        rows.append(dict(id=account_id, unit_id="bench-unit", region_id="bench-region", unit_kind="government",
                         platform="app", status="active", delivery_mode=mode, webhook_url=url,
                         webhook_secret=client_secret(f"c{i}") if url else None, endpoint_active=True,
                         endpoint_key=url.split("/")[2] if url else "", updated_at=datetime.now(timezone.utc)))
    engine = create_engine(f"sqlite:///{stack.data_dir / 'dispatch.db'}", connect_args={"timeout": 30})
    with engine.begin() as conn:
        for start in range(0, n, 2000):
            conn.execute(insert(Account.__table__), rows[start:start + 2000])
    engine.dispose()
    return ids


def client_tokens(stack: Stack, ids: list[str]) -> list[list[str]]:
    """What the client-credentials grant would give each stream account."""
    engine = create_engine(f"sqlite:///{stack.data_dir / 'account.db'}")
    with engine.connect() as conn:
        key = conn.execute(select(SigningKey.__table__).where(SigningKey.__table__.c.active.is_(True))).first()
    engine.dispose()
    now = datetime.now(timezone.utc)
    claims = {"iss": ISSUER, "aud": PLATFORM_AUDIENCE, "iat": int(now.timestamp()),
              "exp": int((now + timedelta(hours=1)).timestamp()), "unit": "bench-unit", "roles": ["client"]}
    # sealed at rest with the stack's development key encryption key (its data directory)
    pem = install_key_sealer("", "", stack.data_dir, production=False).open(key.kid, key.private_pem)
    private = serialization.load_pem_private_key(pem.encode(), password=None)  # parsed once
    return [[a, jwt.encode({**claims, "sub": a, "name": a, "account": a}, private, algorithm="RS256",
                           headers={"kid": key.kid})] for a in ids]


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def run(mode: str, n: int, procs: int, tmp: Path, replicas: int = 1) -> dict:
    stack = Stack(data_dir=tmp / mode, free_ports=True)
    stack.extra_env.update({"DISPATCH_BREAKER_FAILURES": "100000"})
    if mode == "webhook":  # clients share their receivers' ports: one endpoint may use the whole concurrency
        stack.extra_env["DISPATCH_ENDPOINT_CONCURRENCY"] = os.environ.get("DISPATCH_CONCURRENCY", "512")
    # DISPATCH_* settings in the bench's environment reach the dispatch process (to try other settings).
    stack.extra_env.update({k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")})
    helpers: list[subprocess.Popen] = []
    watch: BusWatch | None = None
    try:
        stack.start(only=("account", "dispatch"))
        watch = BusWatch(stack.nats_url)
        account, dispatch = stack.services["account"], stack.services["dispatch"]
        # More dispatch processes on the same database and NATS, as more pods would be; stream
        # client process k connects to dispatch process k mod replicas.
        dispatches = [dispatch] + [stack.add_replica("dispatch") for _ in range(replicas - 1)]
        with httpx.Client(timeout=30) as http:
            r = http.post(f"{account.base_url}/v1/auth/token", data={"username": "ops", "password": "demo-pass-2026"})
            ops = {"Authorization": f"Bearer {r.json()['access_token']}"}
            urls = []
            if mode == "webhook":
                for _ in range(procs):
                    port = free_port()
                    helpers.append(subprocess.Popen([sys.executable, str(ROOT / "bench" / "webhook_clients.py"),
                                                     "--port", str(port)], cwd=ROOT))
                    urls.append(f"http://127.0.0.1:{port}")
                    wait_for(lambda: port_open("127.0.0.1", port), 10, "a receiver")
            ids = seed_accounts(stack, n, mode, urls)
            outs = []
            if mode == "stream":
                tokens = client_tokens(stack, ids)
                share = -(-n // procs)
                for k in range(procs):
                    clients_file, out = tmp / f"clients{k}.json", tmp / f"times{k}.json"
                    clients_file.write_text(json.dumps(tokens[k * share:(k + 1) * share]))
                    helpers.append(subprocess.Popen(
                        [sys.executable, str(ROOT / "bench" / "stream_clients.py"), "--target",
                         dispatches[k % len(dispatches)].grpc_target,
                         "--clients", str(clients_file), "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True))
                    outs.append(out)
                for proc in helpers:
                    line = proc.stdout.readline()
                    if not line.startswith("connected"):
                        raise SystemExit(f"bench: a stream client process said {line!r}")
                time.sleep(2)  # every stream past its hello and waiting

            def push() -> tuple[str, float]:
                item = new_id()
                approval = ev.ItemApproved(review_id=new_id(), approver_ids=["r1", "r2", "r3"], item=ev.ItemSnapshot(
                    item_id=item, version=1, unit_id="bench-unit", author_id="editor", title="基准测试稿件",
                    body="正文：一键推稿。" * 50, targets=ev.Targets(all=True)))
                started = publish(stack.nats_url, "govmedia.review.item.approved", approval, item)

                wait_for(lambda: watch.acknowledged(item) >= n, 600, "every publish acknowledged", every=0.005)
                took = time.monotonic() - started
                r = http.get(f"{dispatch.base_url}/v1/publications/{item}", headers=ops)
                if r.json()["counts"]["acknowledged"] != n:
                    raise SystemExit(f"bench: announced {watch.acknowledged(item)} acknowledgements, dispatch "
                                     f"counts {r.json()['counts']}")
                return item, took

            # A first push warms up (connections caught up, pools filled); the second is measured.
            push()

            def clients_cpu() -> float:
                """The simulated clients' processes (the other share of the machine); NaN once
                one has ended (stream clients end when they have had their kill)."""
                try:
                    return sum(cpu_s(p.pid) for p in helpers)
                except OSError:
                    return float("nan")
            def dispatch_cpu() -> float:
                return sum(cpu_s(d.proc.pid) for d in dispatches)
            cpu_before, clients_before = dispatch_cpu(), clients_cpu()
            item, push_s = push()
            push_cpu = dispatch_cpu() - cpu_before
            push_clients_cpu = clients_cpu() - clients_before

            retraction = ev.ItemRetracted(item_id=item, version=1, unit_id="bench-unit", reason="基准测试撤稿",
                                          retracted_by="bench")
            wall, mono = time.time(), time.monotonic()
            started = publish(stack.nats_url, "govmedia.content.item.retracted", retraction, item)
            kill_wall = wall + (started - mono)  # the wall-clock moment JetStream took the retraction

            cpu_before, clients_before = dispatch_cpu(), clients_cpu()
            kill_s = wait_for(lambda: watch.completed_at(item), 600, "the retraction complete", every=0.005) - started
            kill_cpu = dispatch_cpu() - cpu_before
            kill_clients_cpu = clients_cpu() - clients_before
            peaks = [rss_peak_mb(d.proc.pid) for d in dispatches]
            rss = max(peaks)  # per process: what a pod's limit must hold
            view = http.get(f"{dispatch.base_url}/v1/retractions/{item}", headers=ops).json()
            if (view["targets"], view["confirmed"], view["outstanding"]) != (n, n, 0):
                raise SystemExit(f"bench: the retraction completed, yet {view}")

            arrivals: list[float] = []
            if mode == "stream":
                for out in outs:  # written once each process's clients all had their kill
                    wait_for(out.exists, 60, "the stream clients' arrival times")
                    arrivals += [t["kill"] for t in json.loads(out.read_text()).values() if "kill" in t]
            else:
                for url in urls:
                    state = http.get(f"{url}/state").json()
                    if state["errors"]:
                        raise SystemExit(f"bench: the webhook clients refused requests: {state['errors'][:5]}")
                    for events in state["events"].values():
                        kills = [t for kind, of, t in events if kind.endswith(".retracted") and of == item]
                        arrivals += kills[:1]
            if len(arrivals) < n:
                raise SystemExit(f"bench: only {len(arrivals)} of {n} clients saw the kill")
            latencies = [max(t - kill_wall, 0.0) * 1000 for t in arrivals]
    finally:
        if watch is not None:
            watch.close()
        for proc in helpers:
            proc.terminate()
        for proc in helpers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        stack.stop()
    return {"push_all_acked_s": push_s, "kill_all_acked_s": kill_s, "kill_p99_ms": p99(latencies),
            "kill_median_ms": statistics.median(latencies), "dispatch_rss_mb": rss, "peaks": peaks,
            "push_cpu_ms_per_client": 1000 * push_cpu / n, "kill_cpu_ms_per_client": 1000 * kill_cpu / n,
            "push_clients_cpu_ms": 1000 * push_clients_cpu / n, "kill_clients_cpu_ms": 1000 * kill_clients_cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--modes", default="stream,webhook")
    parser.add_argument("--stream-procs", type=int, default=4)
    parser.add_argument("--webhook-procs", type=int, default=4)
    parser.add_argument("--dispatch-replicas", type=int, default=1,
                        help="dispatch processes sharing the work (stream clients spread over them)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            procs = args.stream_procs if mode == "stream" else args.webhook_procs
            results[mode] = run(mode, args.clients, procs, Path(tmp), args.dispatch_replicas)
            r = results[mode]
            print(f"{mode} ({args.dispatch_replicas} dispatch process(es)): push {r['push_all_acked_s']:.2f} s, kill {r['kill_all_acked_s']:.2f} s, kill median "
                  f"{r['kill_median_ms']:.0f} ms, dispatch peak RSS {'/'.join(f'{p:.0f}' for p in r['peaks'])} MB; dispatch CPU per "
              f"client: push {r['push_cpu_ms_per_client']:.2f} ms, kill {r['kill_cpu_ms_per_client']:.2f} ms; the "
              f"simulated clients' CPU per client: push {r['push_clients_cpu_ms']:.2f} ms, kill "
              f"{r['kill_clients_cpu_ms']:.2f} ms", flush=True)
    for mode, r in results.items():
        print(f"BENCH dispatch mode={mode} clients={args.clients} push_all_acked_s={r['push_all_acked_s']:.3f} "
              f"kill_all_acked_s={r['kill_all_acked_s']:.3f} kill_p99_ms={r['kill_p99_ms']:.1f} "
              f"dispatch_rss_mb={r['dispatch_rss_mb']:.1f}")


if __name__ == "__main__":
    main()

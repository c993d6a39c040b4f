"""`make bench-dispatch`: one item pushed to 10,000 matrix clients and then retracted, with
stream clients, webhook clients and NATS clients (delivery mode nats, issue 17), the clients
simulated in separate processes.

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
- nats: nats-server in operator mode (with `--nats-nodes 3`, a local three-node cluster that
  is also the services' bus, govmedia_cli/nats_cluster.py), and the clients of
  bench/nats_clients.py in processes of `--nats-per-process`, each on its own connection with
  its own user JWT of the CLIENTS account (signed by the bench with the account's signing key,
  as the account service would issue it: 10,000–30,000 issuances are not what is measured),
  acknowledging every event on its `.ack` subject. After the measured kill dispatch is
  stopped and bench/nats_floor.py's floor is measured on the same servers and clients: one
  publisher with dispatch's NATS user, every client acknowledging.

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
BENCH dispatch mode=nats clients=10000 [nodes=3] push_all_acked_s=… kill_all_acked_s=… kill_p99_ms=… dispatch_rss_mb=…
BENCH nats_floor clients=10000 [nodes=3] … (the floor under the nats line, bench/nats_floor.py)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
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
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, insert, select

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from bench import nats_floor  # noqa: E402
from bench.nats_clients import Fleet  # noqa: E402
from govmedia.events.v1 import events_pb2 as ev  # noqa: E402
from govmedia_cli.nats_cluster import NatsCluster  # noqa: E402
from govmedia_cli.stack import Stack, free_port, port_open  # noqa: E402
from govmedia_kit.db import new_id  # noqa: E402
from govmedia_kit.events import envelope_headers  # noqa: E402
from govmedia_kit.nats_estate import Estate  # noqa: E402
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


def publish(stack: Stack, subject: str, message, about: str) -> float:
    """Publish one event as its producer would; returns the moment JetStream took it."""
    async def go() -> float:
        nc = await stack.connect_bus()  # the estate's admin user when the servers are in operator mode
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

    def __init__(self, stack: Stack):
        # item → its publishes' deliveries announced acknowledged (a set: a core subscription sees
        # an event each time it is published, and the outbox may publish one twice, which
        # JetStream's de-duplication keeps out of the stream but not from core subscribers)
        self.acked: defaultdict[str, set[str]] = defaultdict(set)
        self.completed: dict[str, float] = {}  # item → time.monotonic() of its completion's arrival
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._watch(stack),),
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise SystemExit("bench: could not subscribe to dispatch's events")

    async def _watch(self, stack: Stack) -> None:
        self._stop = asyncio.Event()
        nc = await stack.connect_bus()

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


def quiet(pids: list[int], timeout: float = 120, still_s: float = 1.0) -> None:
    """Until these processes have used under 2 % of a core for `still_s` (e.g. dispatch past
    10,000 hellos, each looking for what the client missed)."""
    deadline = time.monotonic() + timeout
    was = sum(cpu_s(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(still_s)
        now = sum(cpu_s(p) for p in pids)
        if now - was < 0.02 * still_s:
            return
        was = now


class Profile:
    """`--profile DIR`: py-spy (beside this Python) sampling the dispatch processes during one
    phase, its stacks written collapsed (flamegraph.pl, speedscope) to DIR/<mode>-<phase>-<pid>.txt."""

    def __init__(self, out_dir: Path | None, pids: list[int], name: str):
        self.procs = []
        if out_dir is None:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).parent / "py-spy"
        for pid in pids:
            self.procs.append(subprocess.Popen(
                [str(spy), "record", "--pid", str(pid), "--rate", "250", "--nonblocking", "--format", "raw",
                 "--output", str(out_dir / f"{name}-{pid}.txt")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.5)  # attached

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
        for proc in self.procs:
            proc.wait(30)


def run(mode: str, n: int, procs: int, tmp: Path, replicas: int = 1, nodes: int = 1,
        profile: Path | None = None) -> dict:
    cluster: NatsCluster | None = None
    home = tmp / f"{mode}-{n}-{nodes}"
    if mode == "nats" and nodes > 1:
        # the services' bus and the clients on one local cluster in operator mode
        estate = Estate.ensure(home / "nats-estate")
        cluster = NatsCluster.start(home / "cluster", nodes, estate, log_dir=home / "logs")
        stack = Stack(data_dir=home, free_ports=True, nats_url=cluster.url, external_estate=estate)
    else:
        # mode nats: nats-server in operator mode, each service and each client its own user
        stack = Stack(data_dir=home, free_ports=True, secure_nats=mode == "nats")
    stack.extra_env.update({"DISPATCH_BREAKER_FAILURES": "100000"})
    if mode == "webhook":  # clients share their receivers' ports: one endpoint may use the whole concurrency
        stack.extra_env["DISPATCH_ENDPOINT_CONCURRENCY"] = os.environ.get("DISPATCH_CONCURRENCY", "512")
    # DISPATCH_* settings in the bench's environment reach the dispatch process (to try other settings).
    stack.extra_env.update({k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")})
    helpers: list[subprocess.Popen] = []
    fleet: Fleet | None = None
    watch: BusWatch | None = None
    floor: dict | None = None
    phases, connect_s = "", 0.0
    try:
        stack.start(only=("account", "dispatch"))
        servers = cluster.urls if cluster else [stack.nats_url]
        server_pids = [p for p in cluster.pids if p] if cluster else [stack.nats.proc.pid]
        watch = BusWatch(stack)
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
            if mode == "nats":
                # each client its own connection and user JWT (bench/nats_clients.py), the
                # clients spread over the cluster's nodes
                opened = time.monotonic()
                fleet = Fleet.start(ids, servers, stack.estate, tmp / f"nats-clients-{n}", per_process=procs)
                connect_s = time.monotonic() - opened
                quiet([d.proc.pid for d in dispatches])  # every hello answered (nothing missed yet)

            def push() -> tuple[str, float, float]:
                item = new_id()
                approval = ev.ItemApproved(review_id=new_id(), approver_ids=["r1", "r2", "r3"], item=ev.ItemSnapshot(
                    item_id=item, version=1, unit_id="bench-unit", author_id="editor", title="基准测试稿件",
                    body="正文：一键推稿。" * 50, targets=ev.Targets(all=True)))
                wall, mono = time.time(), time.monotonic()
                started = publish(stack, "govmedia.review.item.approved", approval, item)

                wait_for(lambda: watch.acknowledged(item) >= n, 600, "every publish acknowledged", every=0.005)
                took = time.monotonic() - started
                r = http.get(f"{dispatch.base_url}/v1/publications/{item}", headers=ops)
                if r.json()["counts"]["acknowledged"] != n:
                    raise SystemExit(f"bench: announced {watch.acknowledged(item)} acknowledgements, dispatch "
                                     f"counts {r.json()['counts']}")
                return item, took, wall + (started - mono)

            # A first push warms up (connections caught up, pools filled); the second is measured.
            push()

            client_pids = fleet.pids if fleet else [p.pid for p in helpers]

            def clients_cpu() -> float:
                """The simulated clients' processes (the other share of the machine); NaN once
                one has ended (stream clients end when they have had their kill)."""
                try:
                    return sum(cpu_s(p) for p in client_pids)
                except OSError:
                    return float("nan")
            def dispatch_cpu() -> float:
                return sum(cpu_s(d.proc.pid) for d in dispatches)

            def nats_cpu() -> float:
                return sum(cpu_s(p) for p in server_pids) if mode == "nats" else 0.0
            spy = Profile(profile, [d.proc.pid for d in dispatches], f"{mode}-push")
            cpu_before, clients_before, nats_before = dispatch_cpu(), clients_cpu(), nats_cpu()
            item, push_s, push_wall = push()
            push_cpu = dispatch_cpu() - cpu_before
            push_clients_cpu = clients_cpu() - clients_before
            push_nats_cpu = nats_cpu() - nats_before
            spy.stop()

            retraction = ev.ItemRetracted(item_id=item, version=1, unit_id="bench-unit", reason="基准测试撤稿",
                                          retracted_by="bench")
            spy = Profile(profile, [d.proc.pid for d in dispatches], f"{mode}-kill")
            wall, mono = time.time(), time.monotonic()
            started = publish(stack, "govmedia.content.item.retracted", retraction, item)
            kill_wall = wall + (started - mono)  # the wall-clock moment JetStream took the retraction

            cpu_before, clients_before, nats_before = dispatch_cpu(), clients_cpu(), nats_cpu()
            kill_s = wait_for(lambda: watch.completed_at(item), 600, "the retraction complete", every=0.005) - started
            kill_cpu = dispatch_cpu() - cpu_before
            kill_clients_cpu = clients_cpu() - clients_before
            kill_nats_cpu = nats_cpu() - nats_before
            spy.stop()
            peaks = [rss_peak_mb(d.proc.pid) for d in dispatches]
            rss = max(peaks)  # per process: what a pod's limit must hold
            view = http.get(f"{dispatch.base_url}/v1/retractions/{item}", headers=ops).json()
            if (view["targets"], view["confirmed"], view["outstanding"]) != (n, n, 0):
                raise SystemExit(f"bench: the retraction completed, yet {view}")

            arrivals: list[float] = []
            if mode == "nats":
                pushed: list[float] = []
                again = {"published": 0, "retracted": 0}  # events that came more than once (sent again:
                # not acknowledged in time), by kind
                for events in fleet.events().values():
                    for _, kind, _, _, times in events:
                        again[kind.rpartition(".")[2]] += times > 1
                    kills = [at for _, kind, of, at, _ in events if kind.endswith(".retracted") and of == item]
                    arrivals += [min(kills)] if kills else []
                    pushes = [at for _, kind, of, at, _ in events if kind.endswith(".published") and of == item]
                    pushed += [min(pushes)] if pushes else []
                # where the time goes: until dispatch's first event reaches a client (its commit),
                # until the last one does (the fan-out), until every acknowledgement is recorded
                phases = (f"push: first client {1000 * (min(pushed) - push_wall):.0f} ms, last "
                          f"{1000 * (max(pushed) - push_wall):.0f} ms, all acked {1000 * push_s:.0f} ms; kill: first "
                          f"client {1000 * (min(arrivals) - kill_wall):.0f} ms, last {1000 * (max(arrivals) - kill_wall):.0f} "
                          f"ms, all acked {1000 * kill_s:.0f} ms; {len(pushed)} clients had the push; came more than "
                          f"once: {again['published']} publishes, {again['retracted']} kills")
            elif mode == "stream":
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
            if mode == "nats":
                # The floor under it, measured the same way on the same servers and clients with
                # dispatch stopped: one publisher (dispatch's NATS user), every client acknowledging.
                for d in dispatches:
                    d.stop()
                floor = nats_floor.floor(servers, stack.estate.creds("dispatch-clients"), ids, fleet, server_pids)
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
        if cluster is not None:
            cluster.stop()
        if fleet is not None:  # after the servers: they close first, no client port left in TIME_WAIT
            fleet.stop()
    return {"floor": floor, "phases": phases, "connect_s": connect_s, "push_nats_cpu_ms": 1000 * push_nats_cpu / n, "kill_nats_cpu_ms": 1000 * kill_nats_cpu / n,
            "push_all_acked_s": push_s, "kill_all_acked_s": kill_s, "kill_p99_ms": p99(latencies),
            "kill_median_ms": statistics.median(latencies), "dispatch_rss_mb": rss, "peaks": peaks,
            "push_cpu_ms_per_client": 1000 * push_cpu / n, "kill_cpu_ms_per_client": 1000 * kill_cpu / n,
            "push_clients_cpu_ms": 1000 * push_clients_cpu / n, "kill_clients_cpu_ms": 1000 * kill_clients_cpu / n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--modes", default="stream,webhook,nats")
    parser.add_argument("--stream-procs", type=int, default=4)
    parser.add_argument("--webhook-procs", type=int, default=4)
    parser.add_argument("--nats-per-process", type=int, default=2_500, help="simulated NATS clients per process")
    parser.add_argument("--nats-nodes", type=int, default=1,
                        help="mode nats: nats-servers in one local cluster (the services' bus and the clients)")
    parser.add_argument("--dispatch-replicas", type=int, default=1,
                        help="dispatch processes sharing the work (stream clients spread over them)")
    parser.add_argument("--profile", type=Path, help="py-spy samples of dispatch during the push and the kill, here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            procs = {"stream": args.stream_procs, "webhook": args.webhook_procs, "nats": args.nats_per_process}[mode]
            nodes = args.nats_nodes if mode == "nats" else 1
            results[mode] = run(mode, args.clients, procs, Path(tmp), args.dispatch_replicas, nodes, args.profile)
            r = results[mode]
            servers = (f"; nats-server CPU per client: push {r['push_nats_cpu_ms']:.3f} ms, kill "
                       f"{r['kill_nats_cpu_ms']:.3f} ms" if mode == "nats" else "")
            print(f"{mode} ({args.dispatch_replicas} dispatch process(es){f', {nodes} NATS nodes' if mode == 'nats' else ''}): "
                  f"push {r['push_all_acked_s']:.2f} s, kill {r['kill_all_acked_s']:.2f} s, kill median "
                  f"{r['kill_median_ms']:.0f} ms, dispatch peak RSS {'/'.join(f'{p:.0f}' for p in r['peaks'])} MB; dispatch CPU per "
                  f"client: push {r['push_cpu_ms_per_client']:.2f} ms, kill {r['kill_cpu_ms_per_client']:.2f} ms; the "
                  f"simulated clients' CPU per client: push {r['push_clients_cpu_ms']:.2f} ms, kill "
                  f"{r['kill_clients_cpu_ms']:.2f} ms{servers}", flush=True)
            if mode == "nats":
                print(f"nats: {args.clients} clients connected in {r['connect_s']:.1f} s; {r['phases']}", flush=True)
    for mode, r in results.items():
        nodes = f" nodes={args.nats_nodes}" if mode == "nats" and args.nats_nodes > 1 else ""
        print(f"BENCH dispatch mode={mode} clients={args.clients}{nodes} push_all_acked_s={r['push_all_acked_s']:.3f} "
              f"kill_all_acked_s={r['kill_all_acked_s']:.3f} kill_p99_ms={r['kill_p99_ms']:.1f} "
              f"dispatch_rss_mb={r['dispatch_rss_mb']:.1f}")
        if r["floor"]:  # the floor under it: the same servers and clients, no dispatch
            print(nats_floor.line(args.clients, args.nats_nodes, r["floor"]))


if __name__ == "__main__":
    main()

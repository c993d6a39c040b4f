"""`make bench-nats-floor`: what a push and a kill to N clients cost when NATS fans them out, with
no application work at all, on this machine. The floor under `bench-dispatch mode=nats`
(issue 17), measured the same way and with the same simulated clients.

The pinned nats-server in operator mode (`--nodes 3`: a local three-node cluster,
govmedia_cli/nats_cluster.py), N simulated matrix clients in processes of 2,500
(bench/nats_clients.py: each its own connection and its own user JWT of the CLIENTS account,
subscribed to `govmedia.client.<id>.events`, acknowledging each event with `{"ids": [id]}` on
`.ack`), and one nats-py publisher holding dispatch's user of the CLIENTS account
(`dispatch-clients`) that publishes one event per client (the webhook's CloudEvents JSON, each
client its own event id, as dispatch's deliveries) and counts the acknowledgements carrying
it on `govmedia.client.*.ack`. A first push warms up, a second is measured, then the kill.
Prints, as its last line:
BENCH nats_floor clients=<n> [nodes=<k>] push_all_acked_s=<float> kill_all_acked_s=<float> kill_p99_ms=<float> server_cpu_ms_per_client=<float> clients_cpu_ms_per_client=<float> publisher_cpu_ms_per_client=<float> server_rss_mb=<float>
(all_acked: from the first publish to the last client's acknowledgement arriving back;
kill_p99_ms: from the first publish to the kill's arrival at a client, 99th percentile over
clients, as bench/dispatch.py measures it; the CPU figures are the kill's, per client, and say
which side bounds the wall-clock one on a 2-core machine; server_rss_mb: the largest node's
peak.) `--open`: an open server and clients without credentials (no JWT checks)."""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import nats  # noqa: E402

from bench.nats_clients import Fleet  # noqa: E402
from bench.procstat import cpu_s, rss_peak_mb  # noqa: E402
from govmedia_cli.nats_cluster import NatsCluster  # noqa: E402
from govmedia_kit.collector import tune_gc  # noqa: E402
from govmedia_kit.db import new_id  # noqa: E402
from govmedia_kit.nats_estate import Estate  # noqa: E402

PUBLISHED, RETRACTED = "govmedia.dispatch.item.published", "govmedia.dispatch.item.retracted"


def event(kind: str, event_id: str, item: str, account_id: str) -> bytes:
    """The webhook's CloudEvents JSON of a publish (~1 KB, a title and body) or a kill (~400 bytes)."""
    if kind == RETRACTED:
        data = {"item_id": item, "version": 1, "account_id": account_id, "platform": "app",
                "reason": "撤稿：内容有误", "retracted_at": "2026-12-06T04:00:00Z"}
    else:
        data = {"item_id": item, "version": 1, "account_id": account_id, "platform": "app",
                "title": "基准测试稿件", "body": "正文：一键推稿。" * 50}
    return json.dumps({"specversion": "1.0", "id": event_id, "type": kind, "source": "/govmedia/dispatch",
                       "subject": item, "time": "2026-12-06T04:00:00Z", "datacontenttype": "application/json",
                       "data": data}, ensure_ascii=False, separators=(",", ":")).encode()


async def fan_out(servers: list[str], creds: Path | None, ids: list[str], kind: str,
                  timeout: float = 300) -> dict:
    """One event of `kind` for a new item to every client, as dispatch publishes it, until
    every client acknowledged it. Returns item, started (time.time() of the first publish),
    all_acked_s, publisher_cpu_s."""
    item, run = new_id(), new_id()[:12]
    ids_of = {a: f"{run}{i:012x}" for i, a in enumerate(ids)}  # each client its own delivery id
    wanted = set(ids_of.values())
    bodies = [(f"govmedia.client.{a}.events", event(kind, ids_of[a], item, a)) for a in ids]
    nc = await nats.connect(servers, user_credentials=str(creds) if creds else None,
                            pending_size=256 * 1024 * 1024, max_reconnect_attempts=0)
    acked: set[str] = set()
    done = asyncio.Event()

    async def on_ack(msg) -> None:
        for event_id in json.loads(msg.data).get("ids", ()):
            if event_id in wanted:
                acked.add(event_id)
        if len(acked) == len(wanted):
            done.set()
    await nc.subscribe("govmedia.client.*.ack", cb=on_ack, pending_msgs_limit=len(ids) * 2 + 10,
                       pending_bytes_limit=-1)
    await nc.flush()
    cpu, wall, started = time.process_time(), time.time(), time.monotonic()
    for subject, body in bodies:
        await nc.publish(subject, body)
    await nc.flush()
    await asyncio.wait_for(done.wait(), timeout=timeout)
    took, cpu_s_ = time.monotonic() - started, time.process_time() - cpu
    await nc.close()
    return {"item": item, "started": wall, "all_acked_s": took, "publisher_cpu_s": cpu_s_}


def arrivals_ms(fleet: Fleet, item: str, kind: str, since: float) -> list[float]:
    """Per client, ms from `since` to the first arrival of `item`'s event of `kind`."""
    out = []
    for events in fleet.events().values():
        times = [at for _, k, subject, at, _ in events if k == kind and subject == item]
        if times:
            out.append(max(min(times) - since, 0.0) * 1000)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def floor(servers: list[str], creds: Path | None, ids: list[str], fleet: Fleet, server_pids: list[int]) -> dict:
    """A warm-up push, a measured push, then the measured kill, on servers and clients already up."""
    asyncio.run(fan_out(servers, creds, ids, PUBLISHED))
    push = asyncio.run(fan_out(servers, creds, ids, PUBLISHED))
    pids = server_pids + fleet.pids
    before = {pid: cpu_s(pid) for pid in pids}
    kill = asyncio.run(fan_out(servers, creds, ids, RETRACTED))
    spent = {pid: cpu_s(pid) - was for pid, was in before.items()}
    latencies = arrivals_ms(fleet, kill["item"], RETRACTED, kill["started"])
    if len(latencies) < len(ids):
        raise SystemExit(f"nats_floor: only {len(latencies)} of {len(ids)} clients saw the kill")
    n = len(ids)
    return {"push_all_acked_s": push["all_acked_s"], "kill_all_acked_s": kill["all_acked_s"],
            "kill_p99_ms": p99(latencies), "kill_median_ms": statistics.median(latencies),
            "server_cpu_ms_per_client": 1000 * sum(spent[p] for p in server_pids) / n,
            "clients_cpu_ms_per_client": 1000 * sum(spent[p] for p in fleet.pids) / n,
            "publisher_cpu_ms_per_client": 1000 * kill["publisher_cpu_s"] / n,
            "server_rss_mb": max(rss_peak_mb(p) for p in server_pids)}


def line(n: int, nodes: int, r: dict) -> str:
    return (f"BENCH nats_floor clients={n}{f' nodes={nodes}' if nodes > 1 else ''} "
            f"push_all_acked_s={r['push_all_acked_s']:.3f} kill_all_acked_s={r['kill_all_acked_s']:.3f} "
            f"kill_p99_ms={r['kill_p99_ms']:.1f} server_cpu_ms_per_client={r['server_cpu_ms_per_client']:.4f} "
            f"clients_cpu_ms_per_client={r['clients_cpu_ms_per_client']:.4f} "
            f"publisher_cpu_ms_per_client={r['publisher_cpu_ms_per_client']:.4f} "
            f"server_rss_mb={r['server_rss_mb']:.1f}")


def main() -> None:
    tune_gc()
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1, help="nats-servers in one local cluster")
    parser.add_argument("--per-process", type=int, default=2_500, help="simulated clients per process")
    parser.add_argument("--open", action="store_true", help="an open server, clients without credentials")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        estate = None if args.open else Estate.ensure(tmp / "estate")
        cluster = NatsCluster.start(tmp / "nats", args.nodes, estate, log_dir=tmp / "logs")
        fleet = None
        try:
            ids = [new_id() for _ in range(args.clients)]
            opened = time.monotonic()
            fleet = Fleet.start(ids, cluster.urls, estate, tmp / "clients", per_process=args.per_process)
            print(f"{args.clients} clients connected in {time.monotonic() - opened:.1f} s", flush=True)
            time.sleep(1)
            r = floor(cluster.urls, estate.creds("dispatch-clients") if estate else None, ids, fleet,
                      [p for p in cluster.pids if p])
            stats = fleet.stats()
        finally:
            cluster.stop()  # first: the servers close, so the clients' ports are not left in TIME_WAIT
            if fleet is not None:
                fleet.stop()
    print(f"kill median {r['kill_median_ms']:.0f} ms; clients: {stats['reconnects']} reconnects, "
          f"{stats['errors']} errors {stats['first_errors']}", flush=True)
    print(line(args.clients, args.nodes, r))


if __name__ == "__main__":
    main()

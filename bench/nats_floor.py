"""`make bench-nats-floor`: what a kill to N clients costs when NATS fans it out, with no
application work at all, on this machine. The floor under `bench-dispatch mode=nats` (issue 17),
measured the same way as `bench-grpc-floor`.

The pinned nats-server (`.venv/bin/nats-server`), `--procs` client processes each holding its
share of N raw NATS connections (the protocol spoken directly on asyncio: one TCP connection
per client, `SUB clients.<i>.events`, and on each message `PUB clients.<i>.ack` with the
message's id), and one nats-py publisher that publishes one kill event (the webhook's
CloudEvents JSON, ~400 bytes) to every client's subject and counts the acknowledgements on
`clients.*.ack`. Prints, as its last line:
BENCH nats_floor clients=<n> kill_all_acked_s=<float> kill_p99_ms=<float> server_cpu_ms_per_client=<float> clients_cpu_ms_per_client=<float> publisher_cpu_ms_per_client=<float> server_rss_mb=<float>
(kill_p99_ms: from the first publish to a client's acknowledgement arriving, 99th percentile;
the CPU figures say which side bounds the wall-clock one on a 2-core machine.)
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import nats  # noqa: E402

from bench.procstat import cpu_s, rss_peak_mb  # noqa: E402
from govmedia_cli.stack import NatsServer  # noqa: E402
from govmedia_kit.collector import tune_gc  # noqa: E402

KILL = json.dumps({
    "specversion": "1.0", "type": "govmedia.dispatch.item.retracted", "source": "/govmedia/dispatch",
    "id": "0" * 24, "time": "2026-12-06T04:00:00Z", "datacontenttype": "application/json",
    "data": {"item_id": "i" * 24, "version": 1, "reason": "撤稿：内容有误", "retracted_by": "u" * 24,
             "retracted_at": "2026-12-06T04:00:00Z"}}, ensure_ascii=False).encode()


class RawClient(asyncio.Protocol):
    """One matrix client on its own connection: subscribes to its subject, acknowledges each
    message by publishing its id (what a real client does, minus everything else)."""

    def __init__(self, index: int, ready: asyncio.Future):
        self.ack_subject = f"clients.{index}.ack".encode()
        self.subject = f"clients.{index}.events"
        self.ready, self.buffer, self.transport = ready, bytearray(), None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"echo":false}\r\n'
                        + f"SUB {self.subject} 1\r\nPING\r\n".encode())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self.buffer[:end])
            if line.startswith(b"MSG "):
                size = int(line.rsplit(b" ", 1)[1])
                if len(self.buffer) < end + 2 + size + 2:
                    return  # the payload is still on its way
                del self.buffer[:end + 2 + size + 2]
                self.transport.write(b"PUB %s 24\r\n%s\r\n" % (self.ack_subject, b"0" * 24))
                continue
            del self.buffer[:end + 2]
            if line == b"PING":
                self.transport.write(b"PONG\r\n")
            elif line == b"PONG" and not self.ready.done():
                self.ready.set_result(None)  # the server has our SUB
            elif line.startswith(b"-ERR"):
                raise SystemExit(f"nats_floor: the server refused a client: {line.decode()}")


async def hold(port: int, first: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    ready = []
    for i in range(first, first + n):
        done = loop.create_future()
        await loop.create_connection(lambda i=i, done=done: RawClient(i, done), "127.0.0.1", port)
        ready.append(done)
    await asyncio.gather(*ready)
    print("opened", flush=True)
    await asyncio.Event().wait()


async def publish(url: str, n: int) -> tuple[float, float, float]:
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024, max_reconnect_attempts=0)
    acked_at: list[float] = []
    done = asyncio.Event()

    async def on_ack(_msg) -> None:
        acked_at.append(time.monotonic())
        if len(acked_at) == n:
            done.set()
    await nc.subscribe("clients.*.ack", cb=on_ack, pending_msgs_limit=n + 1, pending_bytes_limit=-1)
    await nc.flush()
    cpu, started = time.process_time(), time.monotonic()
    for i in range(n):
        await nc.publish(f"clients.{i}.events", KILL)
    await nc.flush()
    await asyncio.wait_for(done.wait(), timeout=120)
    took, cpu_ms = time.monotonic() - started, 1000 * (time.process_time() - cpu) / n
    latencies = sorted(t - started for t in acked_at)
    await nc.close()
    return took, 1000 * latencies[int(0.99 * (n - 1))], cpu_ms


def main() -> None:
    tune_gc()
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--role", choices=("clients",), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clients":
        return asyncio.run(hold(args.port, args.first, args.clients))

    me = [sys.executable, str(Path(__file__).resolve())]
    clients: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer.start(Path(tmp) / "js")
        port = int(server.url.rsplit(":", 1)[1])
        try:
            share = -(-args.clients // args.procs)
            for k in range(args.procs):
                n = min(share, args.clients - k * share)
                clients.append(subprocess.Popen(me + ["--role", "clients", "--port", str(port), "--first",
                                                      str(k * share), "--clients", str(n)],
                                                stdout=subprocess.PIPE, text=True))
            for proc in clients:
                if proc.stdout.readline().strip() != "opened":
                    raise SystemExit("nats_floor: a client process failed to open its connections")
            time.sleep(1)
            before = {p.pid: cpu_s(p.pid) for p in clients + [server.proc]}
            took, p99_ms, publisher_cpu = asyncio.run(publish(server.url, args.clients))
            spent = {pid: cpu_s(pid) - was for pid, was in before.items()}
            server_cpu = 1000 * spent.pop(server.proc.pid) / args.clients
            clients_cpu = 1000 * sum(spent.values()) / args.clients
            server_rss = rss_peak_mb(server.proc.pid)
        finally:
            for proc in clients:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            server.stop()
    print(f"BENCH nats_floor clients={args.clients} kill_all_acked_s={took:.3f} kill_p99_ms={p99_ms:.1f} "
          f"server_cpu_ms_per_client={server_cpu:.4f} clients_cpu_ms_per_client={clients_cpu:.4f} "
          f"publisher_cpu_ms_per_client={publisher_cpu:.4f} server_rss_mb={server_rss:.1f}")


if __name__ == "__main__":
    main()

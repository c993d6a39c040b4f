"""`make bench-grpc-floor`: what gRPC in Python costs for a kill to N stream clients with no
application work at all, on this machine. The floor under `bench-dispatch mode=stream`.

A bare `DispatchService.Connect` server (no database, no auth, no feed: it holds each stream
and, when told, writes one kill event to every stream) and `--procs` client processes
holding the streams as bench/stream_clients.py does (100 per connection, acknowledging each
event on its stream). The server is then told to write one event to each stream, and counts
the acknowledgements. Prints, as its last line:
BENCH grpc_floor streams=<n> all_acked_s=<float> server_cpu_ms_per_client=<float> clients_cpu_ms_per_client=<float> server_rss_mb=<float>
(server_rss_mb: the bare server's peak resident memory with the streams open, i.e. what gRPC
itself holds per stream.)
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia.dispatch.v1 import dispatch_pb2 as pb  # noqa: E402
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc  # noqa: E402
from bench.procstat import cpu_s, rss_peak_mb  # noqa: E402
from govmedia_kit.collector import tune_gc  # noqa: E402

STREAMS_PER_CHANNEL = 100
SERVER_OPTIONS = [("grpc.server.max_pending_requests", 100_000),
                  ("grpc.server.max_pending_requests_hard_limit", 100_000)]


class BareServer(pb_grpc.DispatchServiceServicer):
    def __init__(self):
        self.streams: list[asyncio.Queue] = []
        self.acks = 0

    async def Connect(self, request_iterator, context):
        await anext(aiter(request_iterator))  # the hello
        await context.send_initial_metadata((("govmedia-stream", "open"),))
        events: asyncio.Queue = asyncio.Queue()
        self.streams.append(events)

        async def read() -> None:
            async for _ in request_iterator:
                self.acks += 1
        reader = asyncio.create_task(read())
        try:
            while True:
                await context.write(pb.ServerMessage(event=await events.get()))
        finally:
            reader.cancel()


async def serve(expected: int) -> None:
    servicer = BareServer()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_DispatchServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    go = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
    await go.wait()
    started, cpu = time.monotonic(), time.process_time()
    for i, events in enumerate(servicer.streams):
        events.put_nowait(pb.ClientEvent(seq=2, event_id=f"e{i:025d}", type="govmedia.dispatch.item.retracted",
                                         item_id="i" * 26, version=1, delivery_id=f"d{i:025d}", data='{"reason":"撤稿"}'))
    while servicer.acks < expected:
        await asyncio.sleep(0.001)
    print(f"{time.monotonic() - started:.3f} {1000 * (time.process_time() - cpu) / expected:.3f} "
          f"{rss_peak_mb(os.getpid()):.1f}", flush=True)
    await asyncio.Event().wait()  # killed once the clients are gone (stopping first would log their GOAWAYs)


async def hold(port: int, n: int) -> None:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(0, n, STREAMS_PER_CHANNEL)]
    opened = 0

    async def stream(i: int) -> None:
        nonlocal opened
        outbox: asyncio.Queue = asyncio.Queue()
        outbox.put_nowait(pb.ClientMessage(hello=pb.SubscribeRequest(cursor=0, refusals_only=True)))

        async def requests():
            while True:
                yield await outbox.get()
        call = pb_grpc.DispatchServiceStub(channels[i // STREAMS_PER_CHANNEL]).Connect(requests())
        await call.initial_metadata()
        opened += 1
        async for message in call:
            outbox.put_nowait(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[message.event.delivery_id])))
    tasks = [asyncio.create_task(stream(i)) for i in range(n)]
    while opened < n:
        await asyncio.sleep(0.05)
    print("opened", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    tune_gc()  # server and clients collect as the services and bench/stream_clients.py do
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--role", choices=("server", "clients"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        return asyncio.run(serve(args.streams))
    if args.role == "clients":
        return asyncio.run(hold(args.port, args.streams))

    me = [sys.executable, str(Path(__file__).resolve())]
    server = subprocess.Popen(me + ["--role", "server", "--streams", str(args.streams)], stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen] = []
    try:
        port = int(server.stdout.readline())
        share = -(-args.streams // args.procs)
        for k in range(args.procs):
            n = min(share, args.streams - k * share)
            clients.append(subprocess.Popen(me + ["--role", "clients", "--port", str(port), "--streams", str(n)],
                                            stdout=subprocess.PIPE, text=True))
        for proc in clients:
            if proc.stdout.readline().strip() != "opened":
                raise SystemExit("grpc_floor: a client process failed to open its streams")
        time.sleep(2)
        clients_before = sum(cpu_s(p.pid) for p in clients)
        server.send_signal(signal.SIGUSR1)
        all_acked_s, server_cpu, server_rss = server.stdout.readline().split()
        clients_cpu = 1000 * (sum(cpu_s(p.pid) for p in clients) - clients_before) / args.streams
    finally:
        for proc in clients + [server]:  # in this order
            proc.kill()
            proc.wait()
    print(f"BENCH grpc_floor streams={args.streams} all_acked_s={all_acked_s} server_cpu_ms_per_client={server_cpu} "
          f"clients_cpu_ms_per_client={clients_cpu:.3f} server_rss_mb={server_rss}")


if __name__ == "__main__":
    main()

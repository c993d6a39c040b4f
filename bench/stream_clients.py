"""Simulated stream clients for `make bench-dispatch`: one process holding many gRPC `Connect`
streams, each a matrix client with its own token. Every event is acknowledged on its stream as
it arrives (the stream answers refusals only, as a client that needs no receipt per ack asks),
and a dropped stream reconnects with its cursor, as a real client's would; the arrival time of
each client's publish and kill is written, as JSON, to `--out` once every stream has had its kill (or on SIGTERM);
the streams are closed on SIGTERM.

    python bench/stream_clients.py --target 127.0.0.1:9004 --clients clients.json --out times.json
clients.json: [[account_id, token], …]. Prints "connected <n>" once every hello is sent.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from govmedia.dispatch.v1 import dispatch_pb2 as pb  # noqa: E402
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc  # noqa: E402
from govmedia_kit.collector import tune_gc  # noqa: E402

STREAMS_PER_CHANNEL = 100  # HTTP/2 streams multiplexed on one connection
OPEN_TIMEOUT_S = 120.0  # 10,000 streams opening at once on 2 cores take a while: a client waits, as a real one would


async def client(stub, account_id: str, token: str, times: dict, connected: list, done: asyncio.Event,
                 total: int, killed: list, dropped: list) -> None:
    """One matrix client: connects, acknowledges what arrives, and, as a real client must,
    reconnects with its cursor when its stream is dropped."""
    mine = times.setdefault(account_id, {})
    cursor = 0
    while not done.is_set():
        outbox: asyncio.Queue = asyncio.Queue()
        await outbox.put(pb.ClientMessage(hello=pb.SubscribeRequest(cursor=cursor, refusals_only=True)))

        async def requests():
            while True:
                message = await outbox.get()
                if message is None:
                    return
                yield message

        call = stub.Connect(requests(), metadata=(("authorization", f"Bearer {token}"),))
        try:
            # dispatch sends the stream's headers once it is open: without them in time, try again
            await asyncio.wait_for(call.initial_metadata(), OPEN_TIMEOUT_S)
        except asyncio.TimeoutError:
            call.cancel()
            dropped.append(f"not open within {OPEN_TIMEOUT_S} s")
            await outbox.put(None)
            continue
        except grpc.aio.AioRpcError:
            pass  # refused or dropped: the loop below sees the same error
        if not mine.get("connected"):
            mine["connected"] = True
            connected.append(account_id)
        try:
            async for message in call:
                if not message.HasField("event"):
                    continue
                event = message.event
                cursor = max(cursor, event.seq)
                kind = "kill" if event.type.endswith(".retracted") else "publish"
                first = kind not in mine
                mine.setdefault(kind, time.time())
                await outbox.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[event.delivery_id])))
                if kind == "kill" and first:
                    killed[0] += 1
                    if killed[0] == total:
                        done.set()
            if not done.is_set():
                dropped.append("ended by the server")
                await asyncio.sleep(0.2)
        except grpc.aio.AioRpcError as exc:
            if done.is_set():
                return
            # CANCELLED included: this client cancels only by ending its task
            dropped.append(f"{exc.code().name} {exc.details()}")
            await asyncio.sleep(0.2)
        finally:
            await outbox.put(None)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--clients", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    clients = json.loads(args.clients.read_text())
    times: dict[str, dict] = {}
    connected: list[str] = []
    killed = [0]  # clients that have had their kill
    dropped: list[str] = []  # streams that ended with an error (each reconnected)
    done = asyncio.Event()
    # As the services do: with Python's defaults these processes spent ~2.5 s each in the
    # cyclic collector per run, CPU the machine's dispatch then lacked.
    tune_gc()
    stop = asyncio.Event()  # SIGTERM: the streams stay open until then, as real clients' would
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: (done.set(), stop.set()))
    # A local subchannel pool each: channels to one target otherwise share one connection.
    channels = [grpc.aio.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(0, len(clients), STREAMS_PER_CHANNEL)]
    tasks = [asyncio.create_task(client(pb_grpc.DispatchServiceStub(channels[i // STREAMS_PER_CHANNEL]),
                                        account_id, token, times, connected, done, len(clients), killed, dropped))
             for i, (account_id, token) in enumerate(clients)]
    while len(connected) < len(clients):
        await asyncio.sleep(0.05)
    print(f"connected {len(connected)}", flush=True)
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), 10)
        except asyncio.TimeoutError:
            print(f"stream clients: {killed[0]} of {len(clients)} killed, {len(dropped)} drops so far: "
                  f"{sorted(set(dropped))[:5]}", file=sys.stderr, flush=True)
    if dropped:
        print(f"dropped {len(dropped)} streams (reconnected): {sorted(set(dropped))}", file=sys.stderr, flush=True)
    partial = args.out.with_suffix(".partial")
    partial.write_text(json.dumps(times))
    partial.rename(args.out)  # whole, or not there
    # Hanging up now would hand dispatch 10,000 stream ends while it still records the
    # acknowledgements being measured.
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


if __name__ == "__main__":
    asyncio.run(main())

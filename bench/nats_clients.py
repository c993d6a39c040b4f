"""Simulated matrix clients in delivery mode `nats` (issue 17), for `make bench-dispatch` and
`make bench-nats-floor`: each client its own NATS connection with its own credential,
speaking the client protocol (docs: "The client protocol", delivery mode nats v1) directly on
asyncio, in processes of `--per-process` clients each.

A client, as a real one does: connects (INFO → CONNECT with its user JWT and the server's
nonce signed with its own nkey), subscribes to `govmedia.client.<id>.events`, then publishes
its hello `{}`; on each event it parses the CloudEvents JSON, records the first arrival of
that event id (its type, its subject = the item, the wall-clock time, how many times it
came), and acknowledges it with `{"ids": [id]}` on `.ack` (every arrival: an event sent
again is unacknowledged as far as dispatch knows). A dropped connection reconnects to the
next server of the list, subscribes and says hello again.

Credentials: the user JWT the account service would issue at POST /v1/clients/nats-credentials
(signed with the estate's CLIENTS signing key, issuer_account the CLIENTS account,
`client_permissions(id)`, STANDARD and WEBSOCKET connections), but signed by these processes
themselves, each for its own clients: 10,000–30,000 issuances over HTTP would otherwise be
most of the set-up time, and the issuing is not what the benches measure. Without an estate
(an open server) clients connect without credentials.

Connections: this machine allows 20,000 open files per process, hence processes of 2,500
clients; and one source address gives ~28,000 ephemeral ports per destination, hence
clients past every ADDRESS_SHARE-th connect from 127.0.0.2, 127.0.0.3… (bound with
IP_BIND_ADDRESS_NO_PORT, so the port is chosen per destination at connect).
Client i connects first to servers[i % len(servers)] (a cluster's nodes share the clients).

The parent side is `Fleet` (start, pids, stats, events, stop). A client process's own
protocol on its pipes: it prints "connected <n>" once every client has had the server's
answer to its subscription and hello, then obeys lines on stdin: "stats" (answers one JSON
line: connected, events, acks, reconnects, errors), "dump <path>" (writes every client's
events as JSON: {account_id: [[event_id, type, subject, first_at, times], …]}, answers
"dumped"), "quit" or end of input (closes its connections and exits)."""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import nkeys  # noqa: E402

from govmedia_kit.collector import tune_gc  # noqa: E402
from govmedia_kit.nats_estate import CLIENT_CONNECTIONS, Estate, client_permissions, client_subjects  # noqa: E402
from govmedia_kit.nats_jwt import Key, user_jwt  # noqa: E402

PER_PROCESS = 2_500
ADDRESS_SHARE = 20_000  # connections per source address (127.0.0.1, then .2, .3 …)
# Connections opening at once per process (the rest wait their turn): the server gives a
# connection 2 s to authenticate, and 12 processes × 200 at once on 2 busy cores missed it.
HANDSHAKES = 50
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


def source_address(first_index: int, share: int = ADDRESS_SHARE) -> str:
    """The loopback address clients from `first_index` on connect from."""
    return f"127.0.0.{1 + first_index // share}"


class Client(asyncio.Protocol):
    """One matrix client on its own connection (see the module's docstring)."""

    def __init__(self, fleet: "Clients", index: int, account_id: str, jwt: str | None, key):
        self.fleet, self.index, self.account_id, self.jwt, self.key = fleet, index, account_id, jwt, key
        subjects = client_subjects(account_id)
        self.events_subject = subjects["events"]
        self.ack_subject = subjects["ack"].encode()
        self.hello_subject = subjects["hello"]
        self.events: dict[str, list] = {}  # event id → [type, subject, first arrival (time.time()), times]
        self.transport = None
        self.buffer = bytearray()
        self.handshaken = False
        self.ready = False  # the server answered our first PING: subscribed, hello sent
        self.opened: asyncio.Future | None = None
        self.server = index  # which of the servers to try next

    # --- asyncio.Protocol ---
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer.clear()
        self.handshaken = False

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.opened is not None and not self.opened.done():
            self.opened.set_result(False)
        self.fleet.lost(self)

    def data_received(self, data: bytes) -> None:
        now = None
        buf = self.buffer
        buf += data
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return
            if buf.startswith(b"MSG ") or buf.startswith(b"HMSG "):
                parts = bytes(buf[:end]).split()
                size = int(parts[-1])
                start = end + 2 + (int(parts[-2]) if parts[0] == b"HMSG" else 0)
                stop = end + 2 + size
                if len(buf) < stop + 2:
                    return  # the payload is still on its way
                payload = bytes(buf[start:stop])
                del buf[:stop + 2]
                if now is None:
                    now = time.time()
                self._event(payload, now)
                continue
            line = bytes(buf[:end])
            del buf[:end + 2]
            if line == b"PING":
                self.transport.write(b"PONG\r\n")
            elif line == b"PONG":
                if self.opened is not None and not self.opened.done():
                    self.opened.set_result(True)
            elif line.startswith(b"INFO ") and not self.handshaken:
                self._connect(json.loads(line[5:]))
            elif line.startswith(b"-ERR"):
                self.fleet.error(self, line.decode(errors="replace"))
            # +OK (not asked for), later INFOs (cluster changes): nothing to do

    # --- the client protocol ---
    def _connect(self, info: dict) -> None:
        options = {"verbose": False, "pedantic": False, "protocol": 1, "headers": True, "echo": False,
                   "lang": "python-bench", "version": "1", "name": self.account_id}
        if self.jwt is not None:
            nonce = info.get("nonce", "").encode()
            options["jwt"] = self.jwt
            options["sig"] = base64.urlsafe_b64encode(self.key.sign(nonce)).rstrip(b"=").decode()
        self.handshaken = True
        self.transport.write(b"CONNECT " + json.dumps(options).encode() + b"\r\n"
                             + f"SUB {self.events_subject} 1\r\nPUB {self.hello_subject} 2\r\n{{}}\r\nPING\r\n".encode())

    def _event(self, payload: bytes, now: float) -> None:
        try:
            event = json.loads(payload)
            event_id, kind, subject = event["id"], event["type"], event.get("subject")
        except (ValueError, KeyError, TypeError):
            self.fleet.error(self, f"not a CloudEvent: {payload[:80]!r}")
            return
        seen = self.events.get(event_id)
        if seen is None:
            self.events[event_id] = [kind, subject, now, 1]
            self.fleet.received += 1
        else:
            seen[3] += 1
        body = b'{"ids":["%s"]}' % event_id.encode()
        self.transport.write(b"PUB %s %d\r\n%s\r\n" % (self.ack_subject, len(body), body))
        self.fleet.acks += 1


class Clients:
    """One process's clients."""

    def __init__(self, servers: list[str], source: str | None):
        self.servers = [tuple(s.rsplit("//", 1)[-1].rsplit(":", 1)) for s in servers]
        self.source = source
        self.clients: list[Client] = []
        self.received = self.acks = self.reconnects = 0
        self.errors: list[str] = []
        self.stopping = False
        self.handshakes = asyncio.Semaphore(HANDSHAKES)
        self.reopening: set[asyncio.Task] = set()

    async def open(self, client: Client, first: bool) -> None:
        """Connect `client` (to its next server), retrying with a backoff until it is subscribed."""
        loop = asyncio.get_running_loop()
        backoff = 0.2
        while not self.stopping:
            host, port = self.servers[client.server % len(self.servers)]
            client.server += 1
            async with self.handshakes:
                client.opened = loop.create_future()
                sock, ok = None, False
                try:
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    if self.source:
                        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                        sock.bind((self.source, 0))
                    await asyncio.wait_for(loop.sock_connect(sock, (host, int(port))), 10)
                    await loop.create_connection(lambda: client, sock=sock)
                    sock = None  # the transport's now
                    ok = await asyncio.wait_for(client.opened, 30)
                except (OSError, asyncio.TimeoutError) as exc:
                    self.error(client, f"connect {host}:{port}: {exc!r}"[:200])
                finally:
                    if sock is not None:
                        sock.close()
            if ok:
                if not first:
                    self.reconnects += 1
                client.ready = True
                return
            if client.transport is not None:
                client.transport.abort()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5)

    def lost(self, client: Client) -> None:
        if self.stopping or not client.ready:
            return  # still opening: open() retries
        client.ready = False
        task = asyncio.get_running_loop().create_task(self.open(client, first=False))
        self.reopening.add(task)
        task.add_done_callback(self.reopening.discard)

    def error(self, client: Client, what: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(f"{client.account_id}: {what}")

    def stats(self) -> dict:
        return {"clients": len(self.clients), "connected": sum(c.ready for c in self.clients),
                "events": self.received, "acks": self.acks, "reconnects": self.reconnects,
                "errors": len(self.errors), "first_errors": self.errors[:5]}

    def dump(self, path: Path) -> None:
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps({c.account_id: [[i, *e] for i, e in c.events.items()] for c in self.clients}))
        partial.rename(path)  # whole, or not there

    def close(self) -> None:
        self.stopping = True
        for c in self.clients:
            if c.transport is not None:
                c.transport.close()


def credentials(ids: list[str], estate_dir: Path | None) -> list[tuple[str | None, object | None]]:
    """(user JWT, nkey pair) per client, as the account service would issue them; (None, None)
    for an open server."""
    if estate_dir is None:
        return [(None, None)] * len(ids)
    estate = Estate(estate_dir)
    signing = Key.of(estate.clients_signing_seed.read_bytes())
    account = estate.public("CLIENTS")
    out = []
    for account_id in ids:
        user = Key.new("user")
        publish, subscribe = client_permissions(account_id)
        jwt = user_jwt(signing, user.public, account_id, publish=publish, subscribe=subscribe,
                       issuer_account=account, connection_types=CLIENT_CONNECTIONS)
        out.append((jwt, nkeys.from_seed(bytearray(user.seed))))
    return out


async def serve(args) -> None:
    ids = json.loads(Path(args.ids).read_text())
    creds = credentials(ids, Path(args.estate) if args.estate else None)
    fleet = Clients(args.servers.split(","), args.source)
    fleet.clients = [Client(fleet, args.first + i, a, jwt, key) for i, (a, (jwt, key)) in enumerate(zip(ids, creds))]
    tune_gc()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    opening = asyncio.gather(*(fleet.open(c, first=True) for c in fleet.clients))
    while True:
        try:
            await asyncio.wait_for(asyncio.shield(opening), 10)
            break
        except asyncio.TimeoutError:
            print(f"nats clients: {fleet.stats()}", file=sys.stderr, flush=True)
    print(f"connected {len(fleet.clients)}", flush=True)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        command, _, arg = line.partition(" ")
        if command == "stats":
            print(json.dumps(fleet.stats()), flush=True)
        elif command == "dump":
            fleet.dump(Path(arg))
            print("dumped", flush=True)
    fleet.close()
    await asyncio.sleep(0.1)


class Fleet:
    """The parent's handle on the client processes."""

    def __init__(self, procs: list[subprocess.Popen], work_dir: Path):
        self.procs, self.work_dir = procs, work_dir

    @classmethod
    def start(cls, ids: list[str], servers: list[str], estate: Estate | None, work_dir: Path,
              per_process: int = PER_PROCESS, timeout: float = 300, address_share: int = ADDRESS_SHARE) -> "Fleet":
        """One process per `per_process` clients; returns once every client is subscribed and has said hello."""
        work_dir.mkdir(parents=True, exist_ok=True)
        procs = []
        fleet = cls(procs, work_dir)
        try:
            for k, first in enumerate(range(0, len(ids), per_process)):
                ids_file = work_dir / f"ids{k}.json"
                ids_file.write_text(json.dumps(ids[first:first + per_process]))
                command = [sys.executable, str(Path(__file__).resolve()), "--ids", str(ids_file),
                           "--servers", ",".join(servers), "--first", str(first)]
                if estate is not None:
                    command += ["--estate", str(estate.dir)]
                if first >= address_share:
                    command += ["--source", source_address(first, address_share)]
                procs.append(subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                              text=True))
            deadline = time.monotonic() + timeout
            for proc in procs:
                line = fleet._readline(proc, deadline - time.monotonic())
                if not line.startswith("connected"):
                    raise RuntimeError(f"a NATS client process said {line!r}")
        except BaseException:
            fleet.stop()
            raise
        return fleet

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _readline(self, proc: subprocess.Popen, timeout: float) -> str:
        import selectors
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            if not sel.select(max(timeout, 0)):
                raise RuntimeError(f"a NATS client process did not answer within {timeout:.0f} s")
        return proc.stdout.readline()

    def _ask(self, command, timeout: float = 60) -> list[str]:
        """`command` to every process (a function of k: its own to process k); their answers."""
        for k, proc in enumerate(self.procs):
            proc.stdin.write((command(k) if callable(command) else command) + "\n")
            proc.stdin.flush()
        return [self._readline(proc, timeout).strip() for proc in self.procs]

    def stats(self) -> dict:
        """Summed over the processes (first_errors: a few of them)."""
        total: dict = {"first_errors": []}
        for line in self._ask("stats"):
            for key, value in json.loads(line).items():
                if key == "first_errors":
                    total[key] += value
                else:
                    total[key] = total.get(key, 0) + value
        return total

    def events(self) -> dict[str, list[list]]:
        """Every client's events: {account_id: [[event_id, type, subject, first_at, times], …]}."""
        paths = [self.work_dir / f"events{k}.json" for k in range(len(self.procs))]
        for path in paths:
            path.unlink(missing_ok=True)
        answers = self._ask(lambda k: f"dump {paths[k]}")
        if any(a != "dumped" for a in answers):
            raise RuntimeError(f"NATS client processes answered {answers}")
        merged: dict[str, list[list]] = {}
        for path in paths:
            merged.update(json.loads(path.read_text()))
        return merged

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", required=True, help="a JSON list of account ids")
    parser.add_argument("--servers", required=True, help="nats://host:port,…")
    parser.add_argument("--estate", help="the estate's directory (operator mode); none: an open server")
    parser.add_argument("--first", type=int, default=0, help="the index of this process's first client")
    parser.add_argument("--source", help="the loopback address to connect from")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()

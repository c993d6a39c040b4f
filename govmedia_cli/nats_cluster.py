"""A local NATS cluster: `nodes` nats-servers (the pinned `nats_binary()`) routed to each other
on loopback, JetStream on every node, in operator mode when given an estate (as production's
cluster runs, deploy/k8s). For the tests and benches that kill a node in the middle of a
delivery, and for the 30,000-client bench (three nodes share the connections).

    cluster = NatsCluster.start(tmp / "nats", nodes=3, estate=Estate.ensure(tmp / "estate"))
    os.environ["NATS_URL"] = cluster.url  # every node, comma-separated (govmedia_kit/bus.py splits it)
    cluster.kill(1); cluster.restart(1); cluster.stop()

Each node has its own client port, route port and HTTP monitoring port (`monitor_urls`);
`start` returns once every node answers /healthz (JetStream current: with more than one node,
a meta leader elected) and routes to every other node (/routez). No WebSocket listener (a
single `NatsServer` with an estate has one; a cluster's clients here use TCP).

The nodes share this machine's cores, as production's have their own: each node runs with
GOMAXPROCS = cores // nodes (at least 1; GOMAXPROCS in the environment overrides). Three Go
runtimes each scheduling on both cores of a 2-core machine spent twice the CPU per message
(bench/nats_floor.py --nodes 3: 0.17 against 0.09 ms per client, the kill to 30,000 clients
7.7 s against 2.6 s)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from govmedia_kit.nats_estate import Estate

from .stack import free_port, nats_binary, port_open

CLUSTER_NAME = "govmedia"


@dataclass
class _Node:
    name: str
    port: int
    route_port: int
    http_port: int
    config: Path
    log_path: Path | None
    env: dict
    proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen([nats_binary(), "-c", str(self.config)], stdout=log, stderr=log,
                                         env=self.env, start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child holds its own copy

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    store_dir: Path
    estate: Estate | None
    nodes: list[_Node] = field(default_factory=list)

    @classmethod
    def start(cls, store_dir: Path, nodes: int = 3, estate: Estate | None = None,
              log_dir: Path | None = None) -> "NatsCluster":
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        store_dir = Path(store_dir)
        store_dir.mkdir(parents=True, exist_ok=True)
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        cluster = cls(store_dir=store_dir, estate=estate)
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        env = {**os.environ, "GOMAXPROCS": os.environ.get("GOMAXPROCS") or str(max(1, (os.cpu_count() or 1) // nodes))}
        for i, (port, route_port, http_port) in enumerate(ports):
            node_dir = store_dir / f"n{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            node = _Node(f"n{i}", port, route_port, http_port, node_dir / "nats.conf",
                         Path(log_dir) / f"nats-n{i}.log" if log_dir else None, env)
            node.config.write_text(cluster._config(node, node_dir, [p[1] for p in ports]))
            cluster.nodes.append(node)
        try:
            for node in cluster.nodes:
                node.spawn()
            cluster._wait_formed(range(nodes), timeout=30)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _config(self, node: _Node, node_dir: Path, route_ports: list[int]) -> str:
        lines = [f"server_name: {node.name}",
                 f"listen: 127.0.0.1:{node.port}",
                 f"http: 127.0.0.1:{node.http_port}",
                 # a bench's 10,000 connections per node, and their CONNECTs arriving at once
                 "max_connections: 100000",
                 f"jetstream {{ store_dir: \"{node_dir / 'jetstream'}\" }}"]
        if len(route_ports) > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports if p != node.route_port)
            lines.append(f"cluster {{ name: {CLUSTER_NAME}, listen: 127.0.0.1:{node.route_port}, "
                         f"routes: [{routes}] }}")
        if self.estate is not None:
            # Loopback only, for this machine: production's listeners all have TLS (deploy/k8s).
            lines.append(f"resolver {{ type: full, dir: \"{node_dir / 'accounts'}\", allow_delete: false, "
                         f"interval: \"2m\", timeout: \"1.9s\" }}")
            lines.append(self.estate.server_auth())
        return "\n".join(lines) + "\n"

    # --- what clients and services are given ---
    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.port}" for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node, comma-separated: NATS_URL (any node up will do)."""
        return ",".join(self.urls)

    @property
    def monitor_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{n.http_port}" for n in self.nodes]

    @property
    def pids(self) -> list[int | None]:
        return [n.proc.pid if n.alive() else None for n in self.nodes]

    # --- failures ---
    def kill(self, i: int) -> None:
        """SIGKILL node i: the crash, no goodbye to its clients or routes."""
        node = self.nodes[i]
        if node.alive():
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()

    def restart(self, i: int, timeout: float = 30) -> None:
        """Node i again, on the same ports and store, back in the cluster (killed first if it runs)."""
        self.kill(i)
        self.nodes[i].spawn()
        self._wait_formed([i], timeout)

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()

    # --- waiting ---
    def _monitor(self, node: _Node, path: str) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=1) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def _formed(self, node: _Node) -> bool:
        if not port_open("127.0.0.1", node.port):
            return False
        health = self._monitor(node, "/healthz")
        if not health or health.get("status") != "ok":
            return False
        live = [n for n in self.nodes if n is not node and n.alive()]
        if not live:
            return True
        routez = self._monitor(node, "/routez") or {}
        names = {r.get("remote_name") for r in routez.get("routes") or ()}
        return all(n.name in names for n in live)

    def _wait_formed(self, which, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for i in which:
            node = self.nodes[i]
            while not self._formed(node):
                if not node.alive():
                    raise RuntimeError(f"nats-server {node.name} exited; see {node.log_path or 'its log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS cluster not formed within {timeout}s ({node.name}: "
                                       f"{self._monitor(node, '/healthz')}); see {node.log_path or 'the logs'}")
                time.sleep(0.1)

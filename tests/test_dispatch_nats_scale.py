"""Delivery mode `nats` at matrix scale, with real processes and failures (issue 17):
dispatch SIGKILLed in the middle of a kill to 10,000 NATS clients, and one node of a
three-node NATS cluster SIGKILLed during a kill. Every client ends with the kill, and
every kill is recorded acknowledged exactly once.

The clients are the benchmark's (bench/nats_clients.py): processes of raw-protocol
clients, each on its own connection with its own user JWT, acknowledging every event and
saying hello again after a reconnect. The accounts are written straight into dispatch's
read model, as 10,000 `account.activated` events would leave them."""
from __future__ import annotations

import asyncio
import os
import signal
from datetime import datetime, timezone

from bench.nats_clients import Fleet
from govmedia_cli.nats_cluster import NatsCluster
from govmedia_cli.stack import Stack
from govmedia_kit.db import new_id
from govmedia_kit.nats_estate import Estate
from services.dispatch.models import Account
from tests.helpers import client, eventually, login, service_db, service_insert
from tests.test_dispatch import approve, demo_unit, retract

KILLED = "govmedia.dispatch.item.retracted"
ENV = {"DISPATCH_NATS_RESEND_BASE_S": "1", "DISPATCH_NATS_RESEND_CAP_S": "3"}


def seed_nats_accounts(stack, unit_id: str, region_id: str, n: int) -> list[str]:
    ids = [new_id() for _ in range(n)]
    now = datetime.now(timezone.utc)
    asyncio.run(service_insert(stack, "dispatch", Account.__table__, [
        dict(id=a, unit_id=unit_id, region_id=region_id, unit_kind="government", platform="app", status="active",
             delivery_mode="nats", endpoint_active=True, updated_at=now) for a in ids]))
    return ids


def acknowledged(disp, item_id: str) -> int:
    r = disp.get(f"/v1/publications/{item_id}")
    return r.json()["counts"]["acknowledged"] if r.status_code == 200 else 0


def retraction(disp, item_id: str) -> dict:
    r = disp.get(f"/v1/retractions/{item_id}")
    return r.json() if r.status_code == 200 else {}


def kills_acknowledged_once(stack, item_id: str, n: int) -> None:
    """n kills, each with exactly one transition into acknowledged."""
    [(kills, into_acked, distinct)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT (SELECT COUNT(*) FROM deliveries WHERE item_id = '{item_id}' AND kind = 'kill'),
               COUNT(*), COUNT(DISTINCT t.delivery_id)
        FROM delivery_transitions t JOIN deliveries d ON d.id = t.delivery_id
        WHERE d.item_id = '{item_id}' AND d.kind = 'kill' AND t.to_state = 'acknowledged'"""))
    assert kills == into_acked == distinct == n


def every_client_killed(fleet: Fleet, ids: list[str], item_id: str) -> None:
    """Each client got the item's kill, as one event id however often it came."""
    events = fleet.events()
    missing = []
    for account_id in ids:
        kills = {e[0] for e in events.get(account_id, []) if e[1] == KILLED and e[2] == item_id}
        if len(kills) != 1:
            missing.append(account_id)
    assert not missing, f"{len(missing)} clients without exactly one kill event, e.g. {missing[:3]}"


def test_dispatch_sigkilled_mid_kill_to_10000_clients(stack_factory, db_backend, tmp_path):
    n = 10_000
    stack = stack_factory(db_backend, only=("account", "dispatch"), env=ENV, secure_nats=True)
    ops_token = login(stack, "ops")
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(client(stack, "account", ops_token))
    ids = seed_nats_accounts(stack, unit["id"], unit["region_id"], n)
    fleet = Fleet.start(ids, [stack.nats_url], stack.estate, tmp_path / "clients")
    try:
        item = new_id()
        approve(stack, item, unit["id"], all=True)
        eventually(lambda: acknowledged(disp, item) == n, timeout=180, interval=0.5)
        # Half the clients freeze: the kill reaches the others, whose acknowledgements are
        # written; then dispatch dies with the rest outstanding.
        frozen = fleet.procs[: len(fleet.procs) // 2]
        for proc in frozen:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            retract(stack, item, unit["id"], "撤回途中宕机")
            eventually(lambda: retraction(disp, item).get("confirmed", 0) >= n // 4, timeout=120, interval=0.05)
            mid = retraction(disp, item)
            assert mid["targets"] == n and mid["confirmed"] < n and not mid["completed_at"]
            stack.services["dispatch"].kill()
        finally:
            for proc in frozen:
                os.kill(proc.pid, signal.SIGCONT)  # their acknowledgements now reach no one
        stack.services["dispatch"].start()
        stack.services["dispatch"].wait_ready(60)
        done = eventually(lambda: retraction(disp, item).get("completed_at") and retraction(disp, item),
                          timeout=300, interval=0.5)
        assert done["confirmed"] == done["targets"] == n
        kills_acknowledged_once(stack, item, n)
        every_client_killed(fleet, ids, item)
    finally:
        fleet.stop()


def test_one_node_of_three_killed_during_a_kill(db_backend, tmp_path):
    n = 3_000
    estate = Estate.ensure(tmp_path / "estate")
    cluster = NatsCluster.start(tmp_path / "nats", nodes=3, estate=estate, log_dir=tmp_path / "logs")
    from tests.conftest import make_stack

    stack: Stack = make_stack(tmp_path / "stack", db_backend, ("account", "dispatch"))
    stack.nats_url, stack.external_estate = cluster.url, estate
    # Every stream on all three nodes: the bus outlives one of them.
    stack.extra_env.update({**ENV, "NATS_STREAM_REPLICAS": "3"})
    fleet = None
    try:
        stack.start(only=("account", "dispatch"))
        ops_token = login(stack, "ops")
        disp = client(stack, "dispatch", ops_token)
        unit = demo_unit(client(stack, "account", ops_token))
        ids = seed_nats_accounts(stack, unit["id"], unit["region_id"], n)
        fleet = Fleet.start(ids, cluster.urls, estate, tmp_path / "clients")  # a third on each node
        item = new_id()
        approve(stack, item, unit["id"], all=True)
        eventually(lambda: acknowledged(disp, item) == n, timeout=180, interval=0.5)
        # The clients freeze, so the kill is still out when a node dies: what that node held
        # for its clients is lost with it, and they reconnect to the others.
        for proc in fleet.procs:
            os.kill(proc.pid, signal.SIGSTOP)
        try:
            retract(stack, item, unit["id"], "节点宕机时撤回")
            eventually(lambda: retraction(disp, item).get("targets") == n, timeout=60, interval=0.05)
            assert retraction(disp, item)["confirmed"] < n
            cluster.kill(1)
        finally:
            for proc in fleet.procs:
                os.kill(proc.pid, signal.SIGCONT)
        done = eventually(lambda: retraction(disp, item).get("completed_at") and retraction(disp, item),
                          timeout=300, interval=0.5)
        assert done["confirmed"] == done["targets"] == n
        kills_acknowledged_once(stack, item, n)
        every_client_killed(fleet, ids, item)
        assert fleet.stats()["reconnects"] > 0  # the node's clients did move to the others
    finally:
        if fleet is not None:
            fleet.stop()
        stack.stop()
        cluster.stop()
        from tests.conftest import drop_pg_databases
        drop_pg_databases(stack._pg_urls)  # type: ignore[attr-defined]

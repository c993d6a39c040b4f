"""Dispatch at matrix scale, with real processes: a 10,000-target webhook push during which
dispatch is killed with SIGKILL and restarted (every target still ends acknowledged exactly
once), and a retraction issued while a second 10,000-target push is in flight (no client
ends holding the item).

The 10,000 accounts are written straight into dispatch's read model (what as many
`account.activated` events would leave there); all clients share the test's receiver, so
the per-endpoint limit is raised to the worker's whole concurrency."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timezone

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import new_id
from services.dispatch.models import Account
from tests.helpers import client, eventually, login, service_db, service_insert
from tests.test_dispatch import FAST_RETRIES, approve, bus_events, demo_unit, retract
from tests.webhook_receiver import client_secret

N = 10_000
# A short lease: the restarted process takes back what the killed one had in flight soon.
SCALE_ENV = {**FAST_RETRIES, "DISPATCH_ENDPOINT_CONCURRENCY": "256", "DISPATCH_WEBHOOK_TIMEOUT_S": "10",
             "DISPATCH_LEASE_S": "3"}


def seed_webhook_accounts(stack, receiver, unit_id: str, region_id: str, n: int) -> dict[str, str]:
    """n active webhook accounts of the unit, client `c<i>` each: name → account id."""
    ids = {f"c{i}": new_id() for i in range(n)}
    now = datetime.now(timezone.utc)
    rows = [dict(id=account_id, unit_id=unit_id, region_id=region_id, unit_kind="government", platform="app",
                 status="active", delivery_mode="webhook", webhook_url=receiver.url(name),
                 webhook_secret=client_secret(name), endpoint_active=True, endpoint_key=f"127.0.0.1:{receiver.port}",
                 updated_at=now) for name, account_id in ids.items()]
    asyncio.run(service_insert(stack, "dispatch", Account.__table__, rows))
    return ids


def acknowledged(disp, item_id: str) -> int:
    r = disp.get(f"/v1/publications/{item_id}")
    return r.json()["counts"]["acknowledged"] if r.status_code == 200 else 0


def sends_held(stack, pid: int) -> int:
    """Webhook sends in flight under the leases of the process with this pid."""
    [(n,)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT COUNT(*) FROM deliveries WHERE state = 'in_flight' AND lease_owner LIKE '%:{pid}:%'"""))
    return n


def exactly_once(stack, item_id: str, n: int) -> None:
    """One transition into `acknowledged` per delivery, and each announced once on the bus."""
    [(deliveries, into_acked, distinct)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT (SELECT COUNT(*) FROM deliveries WHERE item_id = '{item_id}'),
               COUNT(*), COUNT(DISTINCT t.delivery_id)
        FROM delivery_transitions t JOIN deliveries d ON d.id = t.delivery_id
        WHERE d.item_id = '{item_id}' AND t.to_state = 'acknowledged'"""))
    assert deliveries == into_acked == distinct == n
    announced = Counter(d.delivery_id for e in bus_events(stack, "govmedia.dispatch.deliveries.acknowledged",
                                                          ev.DeliveriesAcknowledged)
                        for d in e.deliveries if d.item_id == item_id)
    assert len(announced) == n and set(announced.values()) == {1}


def test_sigkill_mid_push_then_kill_mid_push_at_10000_targets(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=("account", "dispatch"), env=SCALE_ENV)
    ops_token = login(stack, "ops")
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(client(stack, "account", ops_token))
    ids = seed_webhook_accounts(stack, receiver, unit["id"], unit["region_id"], N)

    # 1. SIGKILL in the middle of the push, and a restart.
    first = new_id()
    approve(stack, first, unit["id"], all=True)
    eventually(lambda: acknowledged(disp, first) >= N // 5, timeout=120, interval=0.05)
    # … at a moment it has sends in flight (not between a round's outcomes and its next claim)
    eventually(lambda: sends_held(stack, stack.services["dispatch"].proc.pid) > 0, timeout=60, interval=0.01)
    stack.restart("dispatch", kill=True)
    eventually(lambda: acknowledged(disp, first) == N, timeout=300, interval=0.5)
    assert receiver.errors == []
    for name in ids:  # every client got it, as one event however often it was sent
        got = receiver.got(name)
        assert got and len({e["id"] for e in got}) == 1, name
    exactly_once(stack, first, N)
    # The crash did hit the push in the middle: the killed process's sends in flight were
    # taken back once their lease expired.
    [(put_back,)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT COUNT(*) FROM delivery_transitions t JOIN deliveries d ON d.id = t.delivery_id
        WHERE d.item_id = '{first}' AND t.from_state = 'in_flight' AND t.to_state = 'pending'
          AND t.error LIKE 'lease expired:%'"""))
    assert put_back > 0

    # 2. A retraction while the next push is in flight: the kill reaches everyone who got
    # (or may have got) the item, and no client ends holding it.
    second = new_id()
    approve(stack, second, unit["id"], all=True)
    eventually(lambda: acknowledged(disp, second) >= N // 10, timeout=120, interval=0.05)
    retract(stack, second, unit["id"], "推送途中撤回")
    report = eventually(lambda: (r := disp.get(f"/v1/retractions/{second}").json()).get("completed_at") and r,
                        timeout=300, interval=0.5)
    holding = [name for name in ids if second in receiver.holds(name)]
    assert holding == []
    reached = sum(any(e["data"]["item_id"] == second for e in receiver.got(name)) for name in ids)
    assert reached < N  # the kill did cut the push short …
    assert report["targets"] >= reached and report["confirmed"] == report["targets"] and report["outstanding"] == 0
    counts = disp.get(f"/v1/publications/{second}").json()["counts"]
    assert counts["acknowledged"] + counts["cancelled"] == N  # … and the rest were cancelled, not sent
    assert receiver.errors == []

"""Two dispatch replicas against the same database and NATS (issue 7 runs two of every
service), as real processes:

- webhooks: a replica starting in the middle of a push sends nothing the first has in
  flight (claims are leases, not reset at start-up); both share the work (SKIP LOCKED on
  PostgreSQL, SQLite's write lock); the one SIGKILLed in the middle of the next push has its
  sends taken back by the other once their lease expires; every target ends acknowledged
  exactly once, announced once;
- streams: a kill reaches a client whichever replica its stream (gRPC `Connect`, or SSE)
  is open on, whichever replica committed the kill.
"""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from govmedia_kit.db import new_id
from tests.helpers import client, eventually, login, service_db
from tests.test_dispatch import (
    FAST_RETRIES, _sse, approve, client_token, demo_unit, register, retract, wait_known,
)
from tests.test_dispatch_scale import acknowledged, exactly_once, seed_webhook_accounts, sends_held
from tests.test_dispatch_streams import Conn

N = 3000
# Small rounds so the push spans many of them and both replicas take part; a short lease so
# the SIGKILLed replica's sends come back soon.
ENV = {**FAST_RETRIES, "DISPATCH_ENDPOINT_CONCURRENCY": "100", "DISPATCH_CONCURRENCY": "100",
       "DISPATCH_CLAIM_BATCH": "100", "DISPATCH_WEBHOOK_TIMEOUT_S": "10", "DISPATCH_LEASE_S": "3"}


def owners(stack, item_id: str) -> set[str]:
    """The processes whose leases the item's deliveries were sent under."""
    rows = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT DISTINCT lease_owner FROM deliveries WHERE item_id = '{item_id}'"""))
    return {r[0] for r in rows}


def test_two_replicas_share_a_push_and_recover_each_others_sends(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=("account", "dispatch"), env=ENV)
    ops_token = login(stack, "ops")
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(client(stack, "account", ops_token))
    ids = seed_webhook_accounts(stack, receiver, unit["id"], unit["region_id"], N)

    # 1. The second replica starts while the first is in the middle of a push: it takes none
    # of the first's sends in flight, so no client hears the publish twice.
    first = new_id()
    approve(stack, first, unit["id"], all=True)
    eventually(lambda: acknowledged(disp, first) >= N // 10, timeout=120, interval=0.05)
    replica = stack.add_replica("dispatch")
    eventually(lambda: acknowledged(disp, first) == N, timeout=300, interval=0.5)
    assert receiver.errors == []
    attempts = dict(asyncio.run(service_db(stack, "dispatch", f"""
        SELECT account_id, attempts FROM deliveries WHERE item_id = '{first}'""")))
    for name, account_id in ids.items():
        # Sent no more often than claimed (a retry after a timeout may have arrived twice):
        # nothing was taken back from a live replica and sent again (checked below as well).
        got = receiver.got(name)
        assert 1 <= len(got) <= attempts[account_id] and len({e["id"] for e in got}) == 1, name
    exactly_once(stack, first, N)
    [(taken_back,)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT COUNT(*) FROM delivery_transitions t JOIN deliveries d ON d.id = t.delivery_id
        WHERE d.item_id = '{first}' AND t.from_state = 'in_flight' AND t.error LIKE 'lease expired:%'"""))
    assert taken_back == 0

    # 2. Both replicas share the next push; one is SIGKILLed in the middle of it and not
    # restarted: the other sends what the dead one had in flight once the lease expires.
    # Each answer takes a moment, so sends seen in flight are still in flight at the kill
    # (on a busy machine an instant answer could be recorded between the look and the kill).
    receiver.overrides.update({name: "slow0.3" for name in ids})
    second = new_id()
    approve(stack, second, unit["id"], all=True)
    eventually(lambda: len(owners(stack, second) - {None}) == 2, timeout=120, interval=0.05)
    eventually(lambda: acknowledged(disp, second) >= N // 5, timeout=120, interval=0.05)
    doomed = stack.services["dispatch"]
    eventually(lambda: sends_held(stack, doomed.proc.pid) > 0, timeout=60, interval=0.01)
    doomed.kill()
    survivor = client(SimpleNamespace(services={"dispatch": replica}), "dispatch", ops_token)
    eventually(lambda: acknowledged(survivor, second) == N, timeout=300, interval=0.5)
    assert receiver.errors == []
    for name in ids:  # every client got it, as one event however often it was sent
        got = [e for e in receiver.got(name) if e["data"]["item_id"] == second]
        assert got and len({e["id"] for e in got}) == 1, name
    exactly_once(stack, second, N)
    [(taken_back,)] = asyncio.run(service_db(stack, "dispatch", f"""
        SELECT COUNT(*) FROM delivery_transitions t JOIN deliveries d ON d.id = t.delivery_id
        WHERE d.item_id = '{second}' AND t.from_state = 'in_flight' AND t.error LIKE 'lease expired:%'"""))
    assert taken_back > 0  # the killed replica did have sends in flight, and they came back


def test_a_kill_reaches_streams_on_either_replica(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "dispatch"), env={**FAST_RETRIES, "DISPATCH_LEASE_S": "3"})
    replica = stack.add_replica("dispatch")
    on_replica = SimpleNamespace(services={"dispatch": replica})
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "rep-a", {"mode": "stream"}, platform="app")
    b = register(ops, unit["id"], "rep-b", {"mode": "stream"}, platform="app")
    c = register(ops, unit["id"], "rep-c", {"mode": "stream"}, platform="web")
    ta, tb, tc = client_token(stack, a), client_token(stack, b), client_token(stack, c)
    wait_known(disp, [a["id"], b["id"], c["id"]])
    wait_known(client(on_replica, "dispatch", ops_token), [a["id"], b["id"], c["id"]])

    # a on the first replica, b on the second; both open before the push, so what reaches
    # them comes from each replica's hub, woken by whichever replica committed.
    ca, cb = Conn(stack, ta), Conn(on_replica, tb)
    item = new_id()
    approve(stack, item, unit["id"], accounts=[a["id"], b["id"], c["id"]])
    ea, eb = ca.event(), cb.event()
    assert ea.item_id == eb.item_id == item and ea.type.endswith(".published")
    assert ca.ack([ea.delivery_id]).acknowledged == 1 and cb.ack([eb.delivery_id]).acknowledged == 1
    # c reads the publish over SSE from the second replica and acknowledges it on the first.
    [pub_c] = _sse(on_replica, tc, 0, 1)
    assert pub_c["data"]["item_id"] == item
    assert client(stack, "dispatch", tc).post("/v1/feed/acks",
                                              json={"delivery_ids": [pub_c["data"]["delivery_id"]]}).json() == {
        "acknowledged": 1}

    retract(stack, item, unit["id"], "两副本撤回")
    ka, kb = ca.event(), cb.event()
    assert ka.item_id == kb.item_id == item and ka.type.endswith(".retracted") and kb.type.endswith(".retracted")
    assert ca.ack([ka.delivery_id]).acknowledged == 1 and cb.ack([kb.delivery_id]).acknowledged == 1
    [kill_c] = _sse(on_replica, tc, pub_c["id"], 1)
    assert kill_c["data"]["item_id"] == item and kill_c["data"]["type"].endswith(".retracted")
    replica_ops = client(on_replica, "dispatch", ops_token)
    assert client(on_replica, "dispatch", tc).post(
        "/v1/feed/acks", json={"delivery_ids": [kill_c["data"]["delivery_id"]]}).json() == {"acknowledged": 1}
    for d in (disp, replica_ops):  # both replicas report the retraction finished, exactly
        report = eventually(lambda: (r := d.get(f"/v1/retractions/{item}").json()).get("completed_at") and r)
        assert report["targets"] == report["confirmed"] == 3 and report["outstanding"] == 0
    ca.close()
    cb.close()

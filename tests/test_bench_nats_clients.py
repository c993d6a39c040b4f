"""The benchmark's simulated NATS clients (bench/nats_clients.py) speak the client protocol of
delivery mode `nats` as a real client must, against real nats-servers in operator mode (a
local three-node cluster, govmedia_cli/nats_cluster.py): each connects with its own user JWT
of the CLIENTS account, subscribes, says hello, acknowledges every event with its id on its
own subject (a repeated event again), records what arrived; when its node dies it reconnects
to another and says hello again. So `make bench-dispatch mode=nats` cannot count an
acknowledgement no real client would send."""
from __future__ import annotations

import asyncio
import json
import urllib.request

import nats

from bench.nats_clients import Fleet
from bench.nats_floor import PUBLISHED, RETRACTED, event
from govmedia_cli.nats_cluster import NatsCluster
from govmedia_kit.db import new_id
from govmedia_kit.nats_estate import Estate


async def until(check, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {check.__doc__ or check}")
        await asyncio.sleep(0.05)


def connection_ips(cluster: NatsCluster) -> list[str]:
    ips = []
    for url in cluster.monitor_urls:
        try:
            with urllib.request.urlopen(f"{url}/connz?limit=1000", timeout=2) as r:
                ips += [c["ip"] for c in json.loads(r.read())["connections"]]
        except OSError:
            pass  # a node that is down
    return ips


async def test_simulated_nats_clients_follow_the_client_protocol(tmp_path):
    estate = Estate.ensure(tmp_path / "estate")
    cluster = NatsCluster.start(tmp_path / "nats", nodes=3, estate=estate, log_dir=tmp_path / "logs")
    fleet = nc = None
    try:
        # dispatch's user of the CLIENTS account, on a node that stays up
        nc = await nats.connect(cluster.urls[1], user_credentials=str(estate.creds("dispatch-clients")))
        hellos: list[tuple[str, bytes]] = []
        acks: list[tuple[str, list]] = []

        async def on_hello(msg):
            hellos.append((msg.subject.split(".")[2], msg.data))

        async def on_ack(msg):
            acks.append((msg.subject.split(".")[2], json.loads(msg.data)["ids"]))
        await nc.subscribe("govmedia.client.*.hello", cb=on_hello)
        await nc.subscribe("govmedia.client.*.ack", cb=on_ack)
        await nc.flush()

        ids = [new_id() for _ in range(12)]
        # three processes of four; the third past the address share connects from 127.0.0.2
        fleet = await asyncio.to_thread(Fleet.start, ids, cluster.urls, estate, tmp_path / "clients",
                                        per_process=4, timeout=60, address_share=8)
        await until(lambda: {a for a, _ in hellos} == set(ids))
        assert {body for _, body in hellos} == {b"{}"}
        assert sorted(connection_ips(cluster)).count("127.0.0.2") == 4
        assert (await asyncio.to_thread(fleet.stats))["connected"] == 12

        # one event each (the first client's twice): each acknowledges its own, on its own subject
        item = new_id()
        for i, a in enumerate(ids):
            await nc.publish(f"govmedia.client.{a}.events", event(PUBLISHED, f"p{i}", item, a))
        await nc.publish(f"govmedia.client.{ids[0]}.events", event(PUBLISHED, "p0", item, ids[0]))
        await until(lambda: len(acks) == 13)
        assert sorted(acks) == sorted([(a, [f"p{i}"]) for i, a in enumerate(ids)] + [(ids[0], ["p0"])])
        events = await asyncio.to_thread(fleet.events)
        assert set(events) == set(ids)
        for i, a in enumerate(ids):
            [[event_id, kind, subject, _at, times]] = events[a]
            assert (event_id, kind, subject, times) == (f"p{i}", PUBLISHED, item, 2 if i == 0 else 1)

        # a node dies: its clients (0, 3, 6, 9 started on node 0) reconnect elsewhere and say hello again
        hellos.clear()
        cluster.kill(0)
        await until(lambda: {a for a, _ in hellos} == {ids[i] for i in (0, 3, 6, 9)})
        stats = await asyncio.to_thread(fleet.stats)
        assert (stats["connected"], stats["reconnects"]) == (12, 4)
        acks.clear()
        for i, a in enumerate(ids):
            await nc.publish(f"govmedia.client.{a}.events", event(RETRACTED, f"k{i}", item, a))
        await until(lambda: len(acks) == 12)
        assert sorted(acks) == sorted((a, [f"k{i}"]) for i, a in enumerate(ids))

        cluster.restart(0)  # back in the cluster
        assert len(connection_ips(cluster)) >= 12
    finally:
        if nc is not None:
            await nc.close()
        if fleet is not None:
            await asyncio.to_thread(fleet.stop)
        cluster.stop()


async def test_a_client_with_a_credential_of_another_account_is_refused(tmp_path):
    """The simulated clients' JWTs are what the server checks: signed by another key, none connects."""
    estate = Estate.ensure(tmp_path / "estate")
    other = Estate.ensure(tmp_path / "other")
    cluster = NatsCluster.start(tmp_path / "nats", nodes=1, estate=estate)
    try:
        try:
            fleet = await asyncio.to_thread(Fleet.start, [new_id()], cluster.urls, other, tmp_path / "clients",
                                            timeout=3)
        except RuntimeError as exc:
            assert "did not answer" in str(exc)
        else:
            await asyncio.to_thread(fleet.stop)
            raise AssertionError("a client with a foreign credential connected")
    finally:
        cluster.stop()

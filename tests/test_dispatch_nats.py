"""Delivery mode `nats` (issue 17): dispatch publishes each client's events on the NATS
servers, which hold the connections and enforce who may read and acknowledge what.

Real processes: the account and dispatch services against nats-server in operator mode
(each service its own NATS user), and matrix clients on nats-py, each with its own user
JWT signed by the CLIENTS account's signing key, as the account service issues them
(tests/test_nats_credentials.py tests that issuance). Accounts reach dispatch as the
account service announces them, on the bus."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import datetime, timezone

import nats
import pytest

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit import nats_jwt
from govmedia_kit.db import new_id
from govmedia_kit.nats_estate import CLIENT_CONNECTIONS, client_permissions, client_subjects
from tests.helpers import client, eventually, login
from tests.test_dispatch import approve, demo_unit, fake_region, publish_all, retract

SERVICES = ("account", "dispatch")
ENV = {"DISPATCH_NATS_RESEND_BASE_S": "0.4", "DISPATCH_NATS_RESEND_CAP_S": "1.5", "DISPATCH_POLL_INTERVAL_S": "0.5"}
KILLED = "govmedia.dispatch.item.retracted"
PUBLISHED = "govmedia.dispatch.item.published"


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=SERVICES, env=ENV, secure_nats=True)


def issue_creds(stack, account_id: str, tmp_path) -> str:
    """A client's .creds as the account service issues them: a user of the CLIENTS account,
    signed with its signing key, allowed its own subjects only."""
    estate = stack.nats.estate
    signer = nats_jwt.Key.of(estate.clients_signing_seed.read_bytes())
    user = nats_jwt.Key.new("user")
    publish, subscribe = client_permissions(account_id)
    jwt = nats_jwt.user_jwt(signer, user.public, account_id, publish=publish, subscribe=subscribe,
                            issuer_account=estate.public("CLIENTS"), connection_types=CLIENT_CONNECTIONS)
    path = tmp_path / f"{account_id}.creds"
    path.write_text(nats_jwt.creds(jwt, user.seed))
    return str(path)


def nats_accounts(stack, unit_id: str, region_id: str, count: int, platform: str = "weibo") -> list[str]:
    """Accounts in delivery mode nats, announced to dispatch on the bus."""
    ids = [new_id() for _ in range(count)]
    publish_all(stack, [("govmedia.account.account.activated", ev.AccountChanged(
        account_id=a, unit_id=unit_id, region_id=region_id, platform=platform, name=f"n{i}", handle=f"n{i}",
        status="active", delivery_mode="nats", unit_kind="government"), a) for i, a in enumerate(ids)])
    return ids


class Client:
    """A matrix client on nats-py in a thread of its own: subscribes to its events, says
    hello, records what arrives, acknowledges when told to (`auto_ack`)."""

    def __init__(self, stack, account_id: str, creds: str, auto_ack: bool = True):
        self.url, self.account_id, self.creds, self.auto_ack = stack.nats_url, account_id, creds, auto_ack
        self.subjects = client_subjects(account_id)
        self.events: list[dict] = []
        self.errors: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.nc = None
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def run(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connect(self) -> "Client":
        self.run(self._connect())
        return self

    async def _connect(self):
        async def on_error(exc):
            self.errors.append(str(exc))

        async def on_event(msg):
            event = json.loads(msg.data)
            self.events.append(event)
            if self.auto_ack:
                await self.nc.publish(self.subjects["ack"], json.dumps({"ids": [event["id"]]}).encode())

        self.nc = await nats.connect(self.url, user_credentials=self.creds, error_cb=on_error,
                                     allow_reconnect=False, max_reconnect_attempts=0)
        await self.nc.subscribe(self.subjects["events"], cb=on_event)
        await self.nc.publish(self.subjects["hello"], b"{}")
        await self.nc.flush()

    def publish(self, subject: str, body: dict) -> None:
        async def go():
            await self.nc.publish(subject, json.dumps(body).encode())
            await self.nc.flush()
        self.run(go())

    def subscribe(self, subject: str) -> None:
        async def go():
            async def on_msg(msg):
                self.events.append({"stolen": msg.subject})
            await self.nc.subscribe(subject, cb=on_msg)
            await self.nc.flush()
        self.run(go())

    def ack(self, ids) -> None:
        self.publish(self.subjects["ack"], {"ids": list(ids)})

    def close(self) -> None:
        if self.nc is not None:
            self.run(self.nc.close())
            self.nc = None

    def of(self, item_id: str, kind: str | None = None) -> list[dict]:
        return [e for e in self.events if e.get("subject") == item_id and (kind is None or e["type"] == kind)]


def retraction(disp, item_id: str) -> dict:
    r = disp.get(f"/v1/retractions/{item_id}")
    return r.json() if r.status_code == 200 else {}


def delivery_of(disp, item_id: str, account_id: str) -> dict:
    [row] = disp.get("/v1/deliveries", params={"item_id": item_id, "account_id": account_id}).json()["items"]
    return row


def setup_clients(stack, tmp_path, count: int, **kw):
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    region = fake_region(stack, unit["region_id"])
    ids = nats_accounts(stack, unit["id"], region, count)
    eventually(lambda: all(disp.get(f"/v1/endpoints/{a}").status_code == 200 for a in ids))
    clients = [Client(stack, a, issue_creds(stack, a, tmp_path), **kw).connect() for a in ids]
    return unit, region, disp, clients


def test_push_and_kill_reach_every_client_and_acknowledgements_are_recorded(stack, tmp_path):
    unit, region, disp, clients = setup_clients(stack, tmp_path, 6)
    item = new_id()
    approve(stack, item, unit["id"], regions=[region])
    eventually(lambda: disp.get(f"/v1/publications/{item}").json().get("counts", {}).get("acknowledged") == 6,
               timeout=30)
    for c in clients:
        [event] = c.of(item)
        assert event["type"] == PUBLISHED and event["specversion"] == "1.0" and event["source"] == "/govmedia/dispatch"
        assert event["data"]["account_id"] == c.account_id and event["data"]["title"]
    retract(stack, item, unit["id"], reason="数据有误")
    done = eventually(lambda: retraction(disp, item).get("completed_at") and retraction(disp, item), timeout=30)
    assert done["targets"] == done["confirmed"] == 6 and done["outstanding"] == 0
    for c in clients:
        [kill] = c.of(item, KILLED)
        assert kill["data"]["reason"] == "数据有误" and kill["data"]["account_id"] == c.account_id
        assert c.events.index(kill) > c.events.index(c.of(item, PUBLISHED)[0])
        # Acknowledged once: created, then acknowledged, whatever was resent meanwhile.
        steps = [(h["from_state"], h["to_state"]) for h in
                 disp.get(f"/v1/deliveries/{kill['id']}").json()["history"]]
        assert steps == [(None, "pending"), ("pending", "acknowledged")]
    for c in clients:
        c.close()


def test_a_client_can_neither_read_nor_acknowledge_for_another(stack, tmp_path):
    unit, region, disp, (alice, bob) = setup_clients(stack, tmp_path, 2, auto_ack=False)
    # The server refuses the subscription to Bob's events and the publish to Bob's acknowledgements.
    alice.subscribe(client_subjects(bob.account_id)["events"])
    item = new_id()
    approve(stack, item, unit["id"], regions=[region])
    eventually(lambda: bob.of(item) and alice.of(item))
    [bobs] = bob.of(item)
    alice.publish(client_subjects(bob.account_id)["ack"], {"ids": [bobs["id"]]})
    # On her own subject, Bob's delivery among hers: refused whole by dispatch.
    [hers] = alice.of(item)
    alice.ack([hers["id"], bobs["id"]])
    eventually(lambda: sum("Permissions Violation" in e or "permissions violation" in e for e in alice.errors) >= 2)
    assert not [e for e in alice.events if "stolen" in e]
    time.sleep(1.5)  # what dispatch would have recorded by now, had it taken either acknowledgement
    assert delivery_of(disp, item, bob.account_id)["state"] == "pending"
    assert delivery_of(disp, item, alice.account_id)["state"] == "pending"
    bob.ack([bobs["id"]])
    alice.ack([hers["id"]])
    eventually(lambda: delivery_of(disp, item, bob.account_id)["state"] == "acknowledged"
               and delivery_of(disp, item, alice.account_id)["state"] == "acknowledged")
    for c in (alice, bob):
        c.close()


def test_an_offline_client_gets_its_kills_first_then_what_it_missed(stack, tmp_path):
    unit, region, disp, (carol,) = setup_clients(stack, tmp_path, 1, auto_ack=False)
    first, second = new_id(), new_id()
    approve(stack, first, unit["id"], regions=[region])
    eventually(lambda: carol.of(first))
    # Not acknowledged: it comes again, with the same id.
    eventually(lambda: len(carol.of(first)) >= 2, timeout=15)
    assert len({e["id"] for e in carol.of(first)}) == 1
    carol.close()
    approve(stack, second, unit["id"], regions=[region])
    retract(stack, first, unit["id"])
    eventually(lambda: retraction(disp, first).get("targets") == 1)
    eventually(lambda: disp.get(f"/v1/publications/{second}").json().get("targets") == 1)
    time.sleep(2)  # resends while offline reach nobody
    carol.events.clear()
    carol.connect()  # says hello
    eventually(lambda: carol.of(first, KILLED) and carol.of(second))
    assert carol.events[0]["type"] == KILLED and carol.events[0]["subject"] == first
    assert not carol.of(first, PUBLISHED)  # the retracted publish never again
    carol.ack({e["id"] for e in carol.events})
    eventually(lambda: retraction(disp, first).get("completed_at"))
    eventually(lambda: disp.get(f"/v1/publications/{second}").json()["counts"]["acknowledged"] == 1)
    carol.close()


def test_an_event_from_its_template_is_the_webhooks_event_byte_for_byte():
    """fanout.py splices each client's delivery id and account id into one rendering per
    item and platform: what it sends must be exactly encode(cloud_event(…)) of that client."""
    from services.dispatch.domain import cloud_event, encode
    from services.dispatch.fanout import Outgoing, event_template
    from services.dispatch.usecases import Contents

    texts = Contents()
    texts._reasons["k1"] = '内容有误 "引号" \\ 与 delivery account'
    texts._payloads[("p1", 2)] = {"title": "关于\"雨季\"防汛的通知 delivery", "subtitle": "", "body": "正文" * 1500,
                                  "cover_url": "https://example.gov.cn/c.png", "category": "notice",
                                  "link": "https://example.gov.cn/items/p1", "attachments": []}
    when = datetime(2026, 12, 6, 8, 0, 0, 123456, tzinfo=timezone.utc)
    for kind, item, version in (("kill", "k1", 1), ("publish", "p1", 2)):
        for platform in ("weibo", "wechat", "app", "other"):
            rows = [Outgoing(new_id(), new_id(), item, version, kind, when) for _ in range(3)]
            pieces = event_template(texts, rows[0], platform)
            for r in rows:
                expected = encode(cloud_event(r.id, kind, item, when, texts.data(r, platform, r.account_id)))
                head, middle, tail = pieces
                assert head + r.id.encode() + middle + r.account_id.encode() + tail == expected

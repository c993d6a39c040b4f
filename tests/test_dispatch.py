"""The dispatch service as a real process beside the account service and a real NATS:
webhook push with signatures, retries and 410, the gRPC and SSE streams, the kill that
always wins, duplicates, and a SIGKILL in the middle of a push.

Approvals and retractions are published straight to JetStream here (the content and
review services are not needed for what dispatch does with their events)."""
from __future__ import annotations

import asyncio
import json
import secrets
from datetime import datetime, timezone

import grpc
import httpx
import pytest

from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import new_id
from govmedia_kit.events import envelope_headers
from tests.helpers import assert_error, auth, client, client_token, eventually, login
from tests.webhook_receiver import Receiver

SERVICES = ("account", "dispatch")
FAST_RETRIES = {
    "DISPATCH_RETRY_BASE_S": "0.05",
    "DISPATCH_RETRY_CAP_S": "0.3",
    "DISPATCH_MAX_ATTEMPTS": "5",
    "DISPATCH_WEBHOOK_TIMEOUT_S": "5",
    "DISPATCH_POLL_INTERVAL_S": "0.5",
    # A crashed process's sends in flight go out again once their lease expires.
    "DISPATCH_LEASE_S": "3",
    # The simulated clients share one host:port (one endpoint): its breaker stays closed here
    # (tests/test_dispatch_delivery.py opens one on purpose).
    "DISPATCH_BREAKER_FAILURES": "1000",
}


@pytest.fixture
def stack(stack_factory, db_backend):
    """The account and dispatch services, with the retry timings shrunk."""
    return stack_factory(db_backend, only=SERVICES, env=FAST_RETRIES)




# --- helpers -------------------------------------------------------------------------------

def demo_unit(ops: httpx.Client) -> dict:
    return ops.get("/v1/units", params={"name": "省政府办公厅"}).json()["items"][0]


def register(ops: httpx.Client, unit_id: str, handle: str, delivery: dict, platform: str = "weibo") -> dict:
    """An account of the unit in the ledger; several per platform, under a recorded exception."""
    unit_name = next(u["name"] for u in ops.get("/v1/units", params={"limit": 200}).json()["items"] if u["id"] == unit_id)
    exc = ops.post(f"/v1/units/{unit_id}/platform-exceptions", json={"platform": platform, "reason": "测试矩阵"})
    assert exc.status_code == 201 or exc.json()["error"]["code"] == "exception_exists", exc.text
    r = ops.post("/v1/accounts", json={
        "unit_id": unit_id, "platform": platform, "name": f"{unit_name}{handle}", "handle": handle,
        "opened_on": "2025-01-01",
        "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}, "delivery": delivery})
    assert r.status_code == 201, r.text
    return r.json()


def webhook(ops, receiver: Receiver, unit_id: str, name: str, mode: str = "ok", platform: str = "weibo") -> str:
    secret = secrets.token_hex(16)
    receiver.secrets[name] = secret
    return register(ops, unit_id, name, {"mode": "webhook", "url": receiver.url(name, mode), "secret": secret},
                    platform)["id"]


def wait_known(disp: httpx.Client, account_ids) -> None:
    """Dispatch learns accounts from events: wait until it has every one."""
    eventually(lambda: all(disp.get(f"/v1/endpoints/{a}").status_code == 200 for a in account_ids))


def publish(stack, subject: str, message, about: str, event_id: str | None = None, msg_id: str | None = None) -> str:
    """Publish an event to JetStream with the envelope of DESIGN.md §4."""
    event_id = event_id or new_id()
    headers = envelope_headers(event_id, subject, "/govmedia/test", about, datetime.now(timezone.utc))
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id

    async def go():
        nc = await stack.connect_bus()
        try:
            await nc.jetstream().publish(subject, message.SerializeToString(), headers=headers)
        finally:
            await nc.close()

    asyncio.run(go())
    return event_id


def publish_all(stack, events) -> None:
    """Publish several (subject, message, about) events over one connection, in order."""
    async def go():
        nc = await stack.connect_bus()
        try:
            js = nc.jetstream()
            for subject, message, about in events:
                event_id = new_id()
                headers = envelope_headers(event_id, subject, "/govmedia/test", about, datetime.now(timezone.utc))
                await js.publish(subject, message.SerializeToString(), headers=headers)
        finally:
            await nc.close()

    asyncio.run(go())


def bus_events(stack, subject: str, message_cls, stream: str = "GOVMEDIA_DISPATCH") -> list:
    """Every event published on `subject` so far, parsed."""
    async def go():
        nc = await stack.connect_bus()
        try:
            sub = await nc.jetstream().pull_subscribe(subject, durable=None, stream=stream)
            got = []
            while True:
                try:
                    got += await sub.fetch(100, timeout=0.5)
                except Exception:
                    return got
        finally:
            await nc.close()

    out = []
    for m in asyncio.run(go()):
        msg = message_cls()
        msg.ParseFromString(m.data)
        out.append(msg)
    return out


def fake_region(stack, parent_id: str, name: str = "测试区") -> str:
    """A region dispatch alone knows (its read model), to keep a test's targets to itself."""
    region_id = new_id()
    publish(stack, "govmedia.account.region.upserted",
            ev.RegionUpserted(region_id=region_id, name=name, parent_id=parent_id, level="county"), region_id)
    return region_id


def fake_accounts(stack, receiver: Receiver | None, unit_id: str, region_id: str, specs: dict[str, dict]) -> dict:
    """Accounts announced to dispatch straight on the bus (as the account service would):
    name → {platform, status, unit_kind, region_id, region_path, mode (receiver mode) or url}.
    Answers name → id."""
    ids, events = {}, []
    for name, spec in specs.items():
        account_id = spec.get("id") or new_id()
        secret = secrets.token_hex(16)
        if receiver is not None:
            receiver.secrets[name] = secret
        url = spec.get("url") or receiver.url(name, spec.get("mode", "ok"))
        ids[name] = account_id
        events.append(("govmedia.account.account.activated", ev.AccountChanged(
            account_id=account_id, unit_id=unit_id, region_id=spec.get("region_id", region_id),
            platform=spec.get("platform", "weibo"),
            name=name, handle=name, status=spec.get("status", "active"), delivery_mode="webhook",
            webhook_url=url, webhook_secret=secret, unit_kind=spec.get("unit_kind", "government"),
            region_path=spec.get("region_path", "")), account_id))
    publish_all(stack, events)
    return ids


def item_approval(item_id: str, unit_id: str, targets: dict, version: int = 1, **snapshot) -> ev.ItemApproved:
    """An approval with any snapshot fields (attachments, publish_at, subtitle…)."""
    fields = {"title": f"标题 {item_id[-4:]}", "body": "正文：一键推稿。", "author_id": "editor", **snapshot}
    return ev.ItemApproved(review_id=new_id(), approver_ids=["r1", "r2", "r3"], item=ev.ItemSnapshot(
        item_id=item_id, version=version, unit_id=unit_id, targets=ev.Targets(**targets), **fields))


def approval(item_id: str, unit_id: str, version: int = 1, **targets) -> ev.ItemApproved:
    return ev.ItemApproved(review_id=new_id(), approver_ids=["r1", "r2", "r3"], item=ev.ItemSnapshot(
        item_id=item_id, version=version, unit_id=unit_id, author_id="editor", title=f"标题 {item_id[-4:]}",
        body="正文：一键推稿。", targets=ev.Targets(**targets)))


def approve(stack, item_id, unit_id, **kw) -> str:
    return publish(stack, "govmedia.review.item.approved", approval(item_id, unit_id, **kw), item_id)


def retract(stack, item_id: str, unit_id: str, reason: str = "内容有误") -> str:
    return publish(stack, "govmedia.content.item.retracted",
                   ev.ItemRetracted(item_id=item_id, version=1, unit_id=unit_id, reason=reason, retracted_by="ops"),
                   item_id)


def counts_reach(disp, item_id: str, **expected):
    def check():
        r = disp.get(f"/v1/publications/{item_id}")
        if r.status_code != 200:
            return False
        counts = r.json()["counts"]
        assert all(counts[k] == v for k, v in expected.items()), counts
        return r.json()
    return eventually(check, timeout=30)


# --- tests ---------------------------------------------------------------------------------

def test_webhook_push_retries_gone_duplicates_and_kill(stack, receiver):
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    province = unit["region_id"]
    city = ops.post("/v1/regions", json={"name": "示范市", "parent_id": province, "level": "city"}).json()["id"]
    city_unit = ops.post("/v1/units", json={"name": "示范市政府办", "region_id": city}).json()["id"]
    ids = {
        "ok1": webhook(ops, receiver, unit["id"], "ok1"),
        "ok2": webhook(ops, receiver, unit["id"], "ok2"),
        "city": webhook(ops, receiver, city_unit, "city"),  # reached through the region subtree
        "flaky": webhook(ops, receiver, unit["id"], "flaky", "fail2"),
        "gone": webhook(ops, receiver, unit["id"], "gone", "gone"),
        "wechat": webhook(ops, receiver, city_unit, "wechat", platform="wechat"),  # another platform
    }
    wait_known(disp, ids.values())  # the city region's own event may still be on its way: the accounts' paths reach it

    item = new_id()
    event_id = approve(stack, item, unit["id"], regions=[province], platforms=["weibo"])
    pub = counts_reach(disp, item, acknowledged=4, failed=1, pending=0, in_flight=0)
    assert pub["targets"] == 5 and pub["version"] == 1 and not pub["retracted"]
    for name in ("ok1", "ok2", "city"):
        [got] = receiver.got(name)  # exactly once
        assert got["specversion"] == "1.0" and got["type"] == "govmedia.dispatch.item.published"
        assert got["subject"] == item and got["source"] and got["time"]
        assert got["data"]["item_id"] == item and got["data"]["version"] == 1
        assert got["data"]["account_id"] == ids[name] and got["data"]["platform"] == "weibo"
        assert got["data"]["title"].startswith("标题") and got["data"]["body"] == "正文：一键推稿。"
    flaky = receiver.got("flaky")
    assert len(flaky) == 3 and len({e["id"] for e in flaky}) == 1  # retried with one stable event id
    assert len(receiver.got("gone")) == 1 and receiver.got("wechat") == []
    assert disp.get(f"/v1/endpoints/{ids['gone']}").json()["endpoint_active"] is False
    assert receiver.errors == []

    # The same approval again, past JetStream's de-duplication (same ce-id, new Nats-Msg-Id),
    # and a second approval event of the same version: nothing is created twice.
    publish(stack, "govmedia.review.item.approved", approval(item, unit["id"], regions=[province],
                                                             platforms=["weibo"]), item, event_id, new_id())
    approve(stack, item, unit["id"], regions=[province], platforms=["weibo"])
    marker = new_id()  # consumed after the duplicates by the same durable consumer
    approve(stack, marker, unit["id"], accounts=[ids["ok1"]])
    counts_reach(disp, marker, acknowledged=1)
    again = disp.get(f"/v1/publications/{item}").json()
    assert again["counts"] == pub["counts"] and again["targets"] == 5
    assert all(len(receiver.got(n)) == 1 for n in ("ok2", "city")) and len(receiver.got("ok1")) == 2

    # One-key retraction: a kill to everyone the item went to; the gone client counts as confirmed.
    retract(stack, item, unit["id"])

    def completed():
        r = disp.get(f"/v1/retractions/{item}")
        return r.json() if r.status_code == 200 and r.json()["completed_at"] else None

    done = eventually(completed, timeout=30)
    assert done["targets"] == done["confirmed"] == 5 and done["outstanding"] == 0 and done["stragglers"] == []
    assert done["gone"] == [ids["gone"]] and done["reason"] == "内容有误"
    for name in ("ok1", "ok2", "city", "flaky"):
        [kill] = receiver.got(name, "retracted")
        assert kill["subject"] == item and kill["data"]["item_id"] == item
    assert len(receiver.got("gone", "retracted")) == 0  # nothing more goes to a gone endpoint
    assert disp.get(f"/v1/publications/{item}").json()["retracted"] is True
    assert receiver.errors == []


def test_webhook_gives_up_after_max_attempts(stack, receiver):
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    broken = webhook(ops, receiver, unit["id"], "broken", "fail99")
    wait_known(disp, [broken])
    item = new_id()
    approve(stack, item, unit["id"], all=True)
    counts_reach(disp, item, failed=1)
    assert len(receiver.got("broken")) == int(FAST_RETRIES["DISPATCH_MAX_ATTEMPTS"])


def test_a_region_push_reaches_accounts_whose_region_dispatch_has_not_heard_of(stack, receiver):
    """Targeting a subtree goes by the path each account's own event carries too: a new
    city's accounts are reached even while its region event is still on its way."""
    ops_token = login(stack, "ops")
    disp = client(stack, "dispatch", ops_token)
    unit_id = demo_unit(client(stack, "account", ops_token))["id"]
    root, county, other, elsewhere = (new_id() for _ in range(4))  # regions dispatch never hears of
    ids = fake_accounts(stack, receiver, unit_id, county, {
        "inside": {"region_path": f"/{root}/{county}/"},
        "outside": {"region_id": elsewhere, "region_path": f"/{other}/{elsewhere}/"},
        # a region whose id begins with the target's is not in its subtree
        "lookalike": {"region_id": elsewhere, "region_path": f"/{root}9/{elsewhere}/"},
    })
    wait_known(disp, ids.values())
    item = new_id()
    approve(stack, item, unit_id, regions=[root])
    pub = counts_reach(disp, item, acknowledged=1)
    assert pub["targets"] == 1
    assert len(receiver.got("inside")) == 1 and not receiver.got("outside") and not receiver.got("lookalike")


def _subscribe(stack, token: str, cursor: int):
    channel = grpc.insecure_channel(stack.services["dispatch"].grpc_target)
    stub = pb_grpc.DispatchServiceStub(channel)
    stream = stub.Subscribe(pb.SubscribeRequest(cursor=cursor), metadata=(("authorization", f"Bearer {token}"),),
                            timeout=30)
    return channel, stub, stream


def _sse(stack, token: str, cursor: int, count: int) -> list[dict]:
    """Read `count` events from the SSE feed, then hang up."""
    events, current = [], {}
    with httpx.stream("GET", f"{stack.services['dispatch'].base_url}/v1/feed", params={"cursor": cursor},
                      headers=auth(token), timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and current:
                events.append(current)
                current = {}
                if len(events) == count:
                    break
    return events


def test_stream_clients_get_the_kill_first_on_reconnect(stack):
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    app = register(ops, unit["id"], "app-client", {"mode": "stream"}, platform="app")
    web = register(ops, unit["id"], "web-client", {"mode": "stream"}, platform="web")
    app_token, web_token = client_token(stack, app), client_token(stack, web)
    wait_known(disp, [app["id"], web["id"]])
    item = new_id()
    approve(stack, item, unit["id"], accounts=[app["id"], web["id"]])

    # gRPC: receive, acknowledge, hang up.
    channel, stub, stream = _subscribe(stack, app_token, 0)
    first = next(stream)
    assert first.type == "govmedia.dispatch.item.published" and first.item_id == item and first.version == 1
    assert first.title.startswith("标题") and first.seq > 0 and first.event_id == first.delivery_id
    # someone else's delivery cannot be acknowledged
    with pytest.raises(grpc.RpcError) as err:
        stub.Ack(pb.AckRequest(delivery_ids=[first.delivery_id]), metadata=(("authorization", f"Bearer {web_token}"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(err.value.trailing_metadata())["error-code"] == "other_account"
    md = (("authorization", f"Bearer {app_token}"),)
    assert stub.Ack(pb.AckRequest(delivery_ids=[first.delivery_id]), metadata=md).acknowledged == 1
    stream.cancel()
    channel.close()

    # SSE: the same feed over REST.
    [sse_first] = _sse(stack, web_token, 0, 1)
    assert sse_first["data"]["item_id"] == item and sse_first["id"] == sse_first["data"]["seq"]
    feed = client(stack, "dispatch", web_token)
    assert_error(client(stack, "dispatch", app_token).post(
        "/v1/feed/acks", json={"delivery_ids": [sse_first["data"]["delivery_id"]]}), 403, "other_account")
    assert feed.post("/v1/feed/acks", json={"delivery_ids": [sse_first["data"]["delivery_id"]]}).json() == {
        "acknowledged": 1}
    assert_error(feed.post("/v1/feed/acks", json={"delivery_ids": ["nope"]}), 404, "delivery_not_found")
    assert_error(disp.post("/v1/feed/acks", json={"delivery_ids": ["nope"]}), 403, "client_required")
    counts_reach(disp, item, acknowledged=2)

    # While both are offline the item is retracted, and a newer item is published to them.
    retract(stack, item, unit["id"], "紧急撤稿")
    eventually(lambda: disp.get(f"/v1/retractions/{item}").status_code == 200)
    later = new_id()
    approve(stack, later, unit["id"], accounts=[app["id"], web["id"]])
    counts_reach(disp, later, pending=2)

    # Reconnecting with its cursor, each gets the kill before anything else.
    channel, stub, stream = _subscribe(stack, app_token, first.seq)
    kill, nxt = next(stream), next(stream)
    assert kill.type == "govmedia.dispatch.item.retracted" and kill.item_id == item
    assert nxt.type == "govmedia.dispatch.item.published" and nxt.item_id == later and nxt.seq > first.seq
    stub.Ack(pb.AckRequest(delivery_ids=[kill.delivery_id, nxt.delivery_id]), metadata=md)
    stream.cancel()
    channel.close()
    r = disp.get(f"/v1/retractions/{item}").json()
    assert r["completed_at"] is None and r["outstanding"] == 1 and r["stragglers"][0]["account_id"] == web["id"]

    sse_kill, sse_next = _sse(stack, web_token, sse_first["id"], 2)
    assert sse_kill["data"]["type"].endswith(".retracted") and sse_next["data"]["item_id"] == later
    feed.post("/v1/feed/acks", json={"delivery_ids": [sse_kill["data"]["delivery_id"]]})
    done = disp.get(f"/v1/retractions/{item}").json()
    assert done["completed_at"] and done["confirmed"] == done["targets"] == 2 and done["reason"] == "紧急撤稿"


def test_retraction_before_approval_and_who_may_see_reports(stack, receiver):
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    hook = webhook(ops, receiver, unit["id"], "early")
    wait_known(disp, [hook])
    item = new_id()
    retract(stack, item, unit["id"], "先撤后审")
    r = eventually(lambda: disp.get(f"/v1/retractions/{item}").json() if disp.get(
        f"/v1/retractions/{item}").status_code == 200 else None)
    assert r["targets"] == 0 and r["completed_at"]
    approve(stack, item, unit["id"], all=True)
    pub = eventually(lambda: disp.get(f"/v1/publications/{item}").json() if disp.get(
        f"/v1/publications/{item}").status_code == 200 else None)
    assert pub["retracted"] is True and pub["targets"] == 0 and sum(pub["counts"].values()) == 0
    marker = new_id()
    approve(stack, marker, unit["id"], accounts=[hook])
    counts_reach(disp, marker, acknowledged=1)
    assert [e["subject"] for e in receiver.got("early")] == [marker]  # the kill won

    # Who may read the reports.
    other_unit = ops.post("/v1/units", json={"name": "省发展改革委", "region_id": unit["region_id"],
                                             "kind": "department"}).json()["id"]
    assert ops.post("/v1/users", json={"username": "outsider", "password": "outsider-pass-1", "unit_id": other_unit,
                                       "roles": ["editor"]}).status_code == 201
    stream_acc = register(ops, unit["id"], "early-app", {"mode": "stream"}, platform="app")
    outsider = client(stack, "dispatch", login(stack, "outsider", "outsider-pass-1"))
    as_client = client(stack, "dispatch", client_token(stack, stream_acc))
    for path in (f"/v1/publications/{item}", f"/v1/retractions/{item}"):
        assert_error(client(stack, "dispatch").get(path), 401, "unauthenticated")
        assert_error(outsider.get(path), 403, "other_unit")
        assert_error(as_client.get(path), 403, "client_not_allowed")
        for user in ("editor", "regulator", "supervisor"):
            assert client(stack, "dispatch", login(stack, user)).get(path).status_code == 200
    assert_error(disp.get("/v1/publications/nope"), 404, "publication_not_found")
    assert_error(disp.get("/v1/retractions/nope"), 404, "retraction_not_found")
    assert_error(as_client.get("/v1/feed", params={"cursor": -1}), 422, "validation_failed")

    with grpc.insecure_channel(stack.services["dispatch"].grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        got = stub.GetRetraction(pb.ItemRequest(item_id=item), metadata=(("authorization", f"Bearer {ops_token}"),))
        assert got.reason == "先撤后审" and got.completed_at
        with pytest.raises(grpc.RpcError) as err:
            stub.GetPublication(pb.ItemRequest(item_id=item),
                                metadata=(("authorization", f"Bearer {login(stack, 'outsider', 'outsider-pass-1')}"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            stub.GetPublication(pb.ItemRequest(item_id="nope"), metadata=(("authorization", f"Bearer {ops_token}"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            next(stub.Subscribe(pb.SubscribeRequest(cursor=0), metadata=(("authorization", f"Bearer {ops_token}"),)))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_sigkill_mid_flight_loses_nothing(stack, receiver):
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    disp = client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    names = [f"slow{i}" for i in range(12)]
    ids = {n: webhook(ops, receiver, unit["id"], n, "slow1.5") for n in names}
    wait_known(disp, ids.values())
    item = new_id()
    approve(stack, item, unit["id"], all=True)
    eventually(lambda: sum(len(receiver.got(n)) for n in names) >= 6)  # requests in flight
    stack.restart("dispatch", kill=True)
    counts_reach(disp, item, acknowledged=12)
    copies = [receiver.got(n) for n in names]
    assert all(got and len({e["id"] for e in got}) == 1 for got in copies)  # at least once, one event id
    assert any(len(got) > 1 for got in copies)  # the crash did hit sends in flight: they went again
    assert receiver.errors == []
    # The history shows it: created once, sent, put back by the restart, sent again, acknowledged.
    resent = next(n for n in names if len(receiver.got(n)) > 1)
    [delivery] = disp.get("/v1/deliveries", params={"item_id": item, "account_id": ids[resent]}).json()["items"]
    steps = [(h["from_state"], h["to_state"]) for h in disp.get(f"/v1/deliveries/{delivery['id']}").json()["history"]]
    assert steps[0] == (None, "pending") and steps.count((None, "pending")) == 1
    assert ("in_flight", "pending") in steps and steps[-1] == ("in_flight", "acknowledged")

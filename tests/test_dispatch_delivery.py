"""Dispatch delivery with the account and dispatch services as real processes and webhook
clients on real ports: targeting by unit kind and the exclusions it reports, per-platform
rendering (a target that cannot take its platform's form fails alone), embargoes and the
kill before them, the history of every delivery, the dead-letter list and the manual
resend, and an endpoint that stops answering: its breaker opens, the others are not
slowed, its kills are outstanding (and raise the stragglers alert) until it comes back.

Approvals, retractions and accounts are published straight to JetStream (the content,
review and account services' events); timings are shrunk but never asserted tightly."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import grpc
import pytest

from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import new_id
from tests.helpers import assert_error, client, eventually, login
from tests.test_dispatch import (
    FAST_RETRIES, bus_events, client_token, counts_reach, demo_unit, fake_accounts, fake_region, item_approval,
    publish, register, retract, wait_known,
)
from tests.webhook_receiver import Receiver

SERVICES = ("account", "dispatch")
APPROVED = "govmedia.review.item.approved"
IMAGE = ev.Attachment(attachment_id="img1", kind="image", content_type="image/jpeg", size=2048, sha256="ab" * 32,
                      name="图.jpg", url="/v1/attachments/img1")
VIDEO = ev.Attachment(attachment_id="vid1", kind="video", content_type="video/mp4", size=1 << 20, sha256="cd" * 32,
                      name="片.mp4", url="/v1/attachments/vid1")


def approve_item(stack, item_id: str, unit_id: str, targets: dict, **snapshot) -> None:
    publish(stack, APPROVED, item_approval(item_id, unit_id, targets, **snapshot), item_id)


def iso_in(seconds: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def deliveries_of(disp, **filters) -> list[dict]:
    r = disp.get("/v1/deliveries", params={"limit": 200, **filters})
    assert r.status_code == 200, r.text
    return r.json()["items"]


# --- 1, 2, 3: targeting, rendering, embargo -----------------------------------------------------

def test_targeting_rendering_and_embargo(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=SERVICES, env=FAST_RETRIES)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    region = fake_region(stack, unit["region_id"])
    dep = {"unit_kind": "department"}
    ids = fake_accounts(stack, receiver, unit["id"], region, {
        "gov": {"platform": "weibo"},                         # another kind of unit
        "weibo": {"platform": "weibo", **dep},
        "wechat": {"platform": "wechat", **dep},
        "douyin": {"platform": "douyin", **dep},
        "app": {"platform": "app", **dep},
        "closed": {"platform": "weibo", "status": "closed", **dep},
        "suspended": {"platform": "weibo", "status": "suspended", **dep},
        "gone": {"platform": "weibo", "mode": "gone", **dep},
    })
    wait_known(disp, ids.values())

    # The gone client answers 410 once; from then on it is left out, and said so.
    first = new_id()
    approve_item(stack, first, unit["id"], {"accounts": [ids["gone"]]})
    eventually(lambda: disp.get(f"/v1/endpoints/{ids['gone']}").json()["endpoint_active"] is False, timeout=30)

    # Departments of the region, a body too long for Weibo, no image, no video.
    long_item = new_id()
    body = "现将有关事项通知如下：" + "一、加强政务公开。" * 250  # 2261 characters
    approve_item(stack, long_item, unit["id"], {"regions": [region], "unit_kinds": ["department"]}, body=body,
                 subtitle="政务公开日活动安排")
    pub = counts_reach(disp, long_item, acknowledged=2, failed=2, pending=0, in_flight=0)
    assert pub["targets"] == 4
    assert pub["excluded"] == {"closed": 1, "suspended": 1, "endpoint_gone": 1}
    assert pub["failures"] == {"render: wechat needs a cover image (cover_url or an image attachment)": 1,
                               "render: douyin needs a video attachment": 1}
    [weibo] = receiver.got("weibo")
    data = weibo["data"]
    assert data["format"] == "weibo" and data["truncated"] and len(data["body"]) <= 2000
    assert data["summary"] == "政务公开日活动安排" and data["body"].endswith(f"/items/{long_item}")
    [app] = receiver.got("app")
    assert app["data"]["notification"]["title"] == app["data"]["title"][:30] and app["data"]["body"] == body
    for name in ("gov", "wechat", "douyin", "closed", "suspended"):
        assert receiver.got(name) == [], name
    assert len(receiver.got("gone")) == 1  # the first item only
    failed = deliveries_of(disp, state="failed", item_id=long_item)
    assert {d["account_id"] for d in failed} == {ids["wechat"], ids["douyin"]}
    assert all(d["last_error"].startswith("render: ") and d["attempts"] == 0 for d in failed)

    # With an image and a video every platform takes it.
    rich = new_id()
    approve_item(stack, rich, unit["id"], {"regions": [region], "unit_kinds": ["department", "government"]},
                 attachments=[IMAGE, VIDEO])
    pub = counts_reach(disp, rich, acknowledged=5, failed=0, pending=0)
    assert pub["targets"] == 5 and pub["failures"] == {}
    [wechat] = receiver.got("wechat")
    assert wechat["data"]["cover_url"] == IMAGE.url and wechat["data"]["digest"]
    [douyin] = receiver.got("douyin")
    assert douyin["data"]["video"]["url"] == VIDEO.url and douyin["data"]["format"] == "douyin"

    # An embargo: nothing before publish_at, then everyone.
    embargoed = new_id()
    publish_at = iso_in(4)
    approve_item(stack, embargoed, unit["id"], {"accounts": [ids["gov"], ids["weibo"]]}, publish_at=publish_at)
    pub = counts_reach(disp, embargoed, pending=2)
    assert pub["scheduled"] is True and pub["publish_at"]
    time.sleep(1.5)
    assert not [e for n in ("gov", "weibo") for e in receiver.got(n) if e["subject"] == embargoed]
    counts_reach(disp, embargoed, acknowledged=2)
    [got] = [e for e in receiver.got("gov") if e["subject"] == embargoed]
    assert got["data"]["publish_at"]

    # A kill before the time cancels the scheduled version everywhere; the kill goes only to
    # those who hold the earlier version.
    item = new_id()
    approve_item(stack, item, unit["id"], {"accounts": [ids["gov"], ids["weibo"]]})
    counts_reach(disp, item, acknowledged=2)
    approve_item(stack, item, unit["id"], {"accounts": [ids["gov"], ids["weibo"], ids["app"]]}, version=2,
                 publish_at=iso_in(120))
    pub = counts_reach(disp, item, pending=3)
    assert pub["version"] == 2 and pub["scheduled"]
    retract(stack, item, unit["id"], "撤回定时稿")

    def completed():
        r = disp.get(f"/v1/retractions/{item}")
        return r.json() if r.status_code == 200 and r.json()["completed_at"] else None

    done = eventually(completed, timeout=30)
    assert done["targets"] == 2 and done["confirmed"] == 2 and done["outstanding"] == 0
    pub = disp.get(f"/v1/publications/{item}").json()
    assert pub["counts"]["cancelled"] == 3 and pub["scheduled"] is False and pub["retracted"]
    assert not [e for e in receiver.got("app", "") if e["subject"] == item]  # never got it, no kill either
    for name in ("gov", "weibo"):
        assert item not in receiver.holds(name)
    # … and a late approval of the retracted item stays suppressed
    approve_item(stack, item, unit["id"], {"accounts": [ids["app"]]}, version=3)
    eventually(lambda: disp.get(f"/v1/publications/{item}").json()["suppressed"] is True)
    assert receiver.errors == []


# --- 4, 8: history, dead letters, resend; gRPC parity ----------------------------------------------

def test_history_dead_letters_and_resend(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=SERVICES, env=FAST_RETRIES)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    region = fake_region(stack, unit["region_id"])
    ids = fake_accounts(stack, receiver, unit["id"], region, {
        "five": {"mode": "fail5"}, "ok": {}, "broken": {"mode": "fail99"}, "gone": {"mode": "gone"},
        "slow": {"mode": "slow2"}})
    wait_known(disp, ids.values())

    item = new_id()
    approve_item(stack, item, unit["id"], {"accounts": [ids["five"], ids["ok"]]})
    counts_reach(disp, item, acknowledged=1, failed=1)
    [dead] = deliveries_of(disp, state="failed", item_id=item)
    assert dead["account_id"] == ids["five"] and dead["attempts"] == 5 and dead["last_error"] == "HTTP 500"
    assert deliveries_of(disp, state="failed", account_id=ids["five"], kind="publish")[0]["id"] == dead["id"]
    assert deliveries_of(disp, state="failed", item_id=item, kind="kill") == []
    assert {d["state"] for d in deliveries_of(disp, item_id=item)} == {"acknowledged", "failed"}
    history = disp.get(f"/v1/deliveries/{dead['id']}").json()["history"]
    assert [(h["from_state"], h["to_state"]) for h in history] == (
        [(None, "pending")] + [("pending", "in_flight"), ("in_flight", "pending")] * 4
        + [("pending", "in_flight"), ("in_flight", "failed")])
    assert all(h["error"] == "HTTP 500" for h in history if h["to_state"] in ("pending", "failed") and h["from_state"])

    # Only ops resends; the unit's editor and the regulator may look.
    for user in ("editor", "regulator", "supervisor"):
        watcher = client(stack, "dispatch", login(stack, user))
        assert watcher.get(f"/v1/deliveries/{dead['id']}").status_code == 200
        assert_error(watcher.post(f"/v1/deliveries/{dead['id']}/resend"), 403, "role_required")
    resent = disp.post(f"/v1/deliveries/{dead['id']}/resend")
    assert resent.status_code == 200, resent.text
    assert resent.json()["state"] == "pending" and resent.json()["attempts"] == 0
    assert resent.json()["history"][-1]["from_state"] == "failed" and "resend" in resent.json()["history"][-1]["error"]
    counts_reach(disp, item, acknowledged=2, failed=0)  # the sixth call goes through
    tail = [(h["from_state"], h["to_state"]) for h in disp.get(f"/v1/deliveries/{dead['id']}").json()["history"][-3:]]
    assert tail == [("failed", "pending"), ("pending", "in_flight"), ("in_flight", "acknowledged")]
    assert_error(disp.post(f"/v1/deliveries/{dead['id']}/resend"), 409, "not_resendable")
    assert_error(disp.post("/v1/deliveries/nope/resend"), 404, "delivery_not_found")
    assert_error(disp.get("/v1/deliveries/nope"), 404, "delivery_not_found")
    assert_error(disp.get("/v1/deliveries", params={"state": "lost"}), 422, "validation_failed")

    # Gone: refused until the account's URL changes.
    gone_item = new_id()
    approve_item(stack, gone_item, unit["id"], {"accounts": [ids["gone"]]})
    counts_reach(disp, gone_item, failed=1)
    [gone] = deliveries_of(disp, item_id=gone_item)
    assert gone["gone"] and gone["last_error"] == "endpoint gone (410)"
    assert_error(disp.post(f"/v1/deliveries/{gone['id']}/resend"), 409, "endpoint_gone")
    fake_accounts(stack, receiver, unit["id"], region, {"gone": {"id": ids["gone"], "mode": "ok"}})
    eventually(lambda: disp.get(f"/v1/endpoints/{ids['gone']}").json()["endpoint_active"] is True)
    assert disp.post(f"/v1/deliveries/{gone['id']}/resend").status_code == 200
    counts_reach(disp, gone_item, acknowledged=1)

    # Retracted since: refused. (The broken client's kill stays outstanding: see the other test.)
    broken_item = new_id()
    approve_item(stack, broken_item, unit["id"], {"accounts": [ids["broken"]]})
    counts_reach(disp, broken_item, failed=1)
    [broken] = deliveries_of(disp, item_id=broken_item)
    retract(stack, broken_item, unit["id"])
    eventually(lambda: disp.get(f"/v1/retractions/{broken_item}").status_code == 200)
    assert_error(disp.post(f"/v1/deliveries/{broken['id']}/resend"), 409, "item_retracted")
    # Its kill is retried until the client answers again: then it holds nothing.
    receiver.overrides["broken"] = "ok"
    eventually(lambda: disp.get(f"/v1/retractions/{broken_item}").json()["completed_at"], timeout=30)
    assert receiver.holds("broken") == set() and receiver.events["broken"][-1]["type"].endswith(".retracted")

    # A kill issued while the publish is in flight to a slow client waits for it, then wins.
    slow_item = new_id()
    approve_item(stack, slow_item, unit["id"], {"accounts": [ids["slow"]]})
    eventually(lambda: receiver.got("slow"), timeout=30)  # the publish is in the client's hands
    retract(stack, slow_item, unit["id"])
    eventually(lambda: disp.get(f"/v1/retractions/{slow_item}").json().get("completed_at"), timeout=30)
    assert [e["type"].rsplit(".", 1)[1] for e in receiver.events["slow"]] == ["published", "retracted"]
    assert receiver.holds("slow") == set()

    # Reach: another unit's people see nothing of it, clients nothing at all.
    other_unit = ops.post("/v1/units", json={"name": "省交通运输厅", "region_id": unit["region_id"],
                                             "kind": "department"}).json()["id"]
    assert ops.post("/v1/users", json={"username": "other-ed", "password": "other-ed-pass-1", "unit_id": other_unit,
                                       "roles": ["editor"]}).status_code == 201
    outsider = client(stack, "dispatch", login(stack, "other-ed", "other-ed-pass-1"))
    assert_error(outsider.get(f"/v1/deliveries/{dead['id']}"), 403, "other_unit")
    assert outsider.get("/v1/deliveries", params={"state": "failed"}).json()["items"] == []
    app = register(ops, unit["id"], "dl-app", {"mode": "stream"}, platform="app")
    as_client = client(stack, "dispatch", client_token(stack, app))
    assert_error(as_client.get("/v1/deliveries"), 403, "client_not_allowed")
    assert_error(client(stack, "dispatch").get("/v1/deliveries"), 401, "unauthenticated")
    page = disp.get("/v1/deliveries", params={"limit": 1})
    assert len(page.json()["items"]) == 1 and page.json()["next_cursor"]

    # gRPC: the same reads and the resend.
    md = (("authorization", f"Bearer {ops_token}"),)
    with grpc.insecure_channel(stack.services["dispatch"].grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        got = stub.GetDelivery(pb.DeliveryRequest(delivery_id=dead["id"]), metadata=md)
        assert got.state == "acknowledged" and got.history[0].to_state == "pending" and not got.history[0].from_state
        listed = stub.ListDeliveries(pb.ListDeliveriesRequest(state="failed", item_id=broken_item), metadata=md)
        assert [d.id for d in listed.items] == [broken["id"]]
        with pytest.raises(grpc.RpcError) as err:
            stub.ResendDelivery(pb.DeliveryRequest(delivery_id=broken["id"]), metadata=md)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(err.value.trailing_metadata())["error-code"] == "item_retracted"
        with pytest.raises(grpc.RpcError) as err:
            stub.ListDeliveries(pb.ListDeliveriesRequest(state="lost"), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        pub = stub.GetPublication(pb.ItemRequest(item_id=item), metadata=md)
        assert pub.counts.acknowledged == 2 and dict(pub.excluded) == {} and not pub.scheduled
    assert receiver.errors == []


# --- 4, 7: a dead endpoint, its breaker, a kill while the push is in flight, stragglers --------------

DEAD_ENV = {**FAST_RETRIES, "DISPATCH_CONCURRENCY": "12", "DISPATCH_ENDPOINT_CONCURRENCY": "4",
            "DISPATCH_WEBHOOK_TIMEOUT_S": "1", "DISPATCH_BREAKER_FAILURES": "3", "DISPATCH_BREAKER_COOLDOWN_S": "2",
            "DISPATCH_MAX_ATTEMPTS": "100", "DISPATCH_STRAGGLER_ALERT_S": "2", "DISPATCH_STRAGGLER_CHECK_S": "0.5"}


def test_dead_endpoint_breaker_kill_in_flight_and_stragglers(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=SERVICES, env=DEAD_ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    region = fake_region(stack, unit["region_id"])
    with Receiver() as dead:  # another port: another endpoint
        healthy = fake_accounts(stack, receiver, unit["id"], region, {f"h{i}": {"mode": "slow0.3"} for i in range(16)})
        hung = fake_accounts(stack, dead, unit["id"], region, {f"d{i}": {"mode": "hang"} for i in range(12)})
        wait_known(disp, [*healthy.values(), *hung.values()])
        item = new_id()
        # The dead endpoint's accounts come first in the queue: without the per-endpoint
        # limit they would take every one of the worker's 12 slots.
        approve_item(stack, item, unit["id"], {"accounts": [*hung.values(), *healthy.values()]})

        # Every healthy client is acknowledged while the dead ones are still being retried.
        def healthy_done():
            states = {d["account_id"]: d for d in deliveries_of(disp, item_id=item)}
            return states if all(states.get(a, {}).get("state") == "acknowledged" for a in healthy.values()) else None
        states = eventually(healthy_done, timeout=40)
        assert all(states[a]["state"] in ("pending", "in_flight") for a in hung.values())
        assert receiver.max_in_flight <= 4  # the per-endpoint limit held

        # The breaker opened: dead deliveries wait untried past the cool-down.
        def circuit_opened():
            return [d for d in deliveries_of(disp, item_id=item) if "circuit open" in (d["last_error"] or "")]
        deferred = eventually(circuit_opened, timeout=30)
        assert {d["account_id"] for d in deferred} <= set(hung.values())
        assert any(d["attempts"] == 0 for d in deferred)  # moved past the cool-down untried
        assert {disp.get(f"/v1/endpoints/{a}").json()["endpoint"] for a in hung.values()} == {f"127.0.0.1:{dead.port}"}
        tried = {name for name in hung if dead.got(name)}
        assert tried and len(tried) < len(hung)  # some were never tried while the breaker was open

        # One-key retraction while the push to the dead endpoint is still in flight.
        retract(stack, item, unit["id"], "紧急撤回")

        def healthy_killed():
            r = disp.get(f"/v1/retractions/{item}").json()
            return r if r.get("confirmed", 0) >= len(healthy) else None
        report = eventually(healthy_killed, timeout=40)
        tried = {name for name in hung if dead.got(name)}  # those a publish may have reached
        assert report["targets"] == len(healthy) + len(tried) and report["completed_at"] is None
        assert {s["account_id"] for s in report["stragglers"]} == {hung[n] for n in tried}
        assert all(s["delivery_id"] for s in report["stragglers"])
        # … a page at a time, when asked: every straggler exactly once
        paged, cursor = [], 0
        while cursor is not None:
            page = disp.get(f"/v1/retractions/{item}", params={"limit": 1, "cursor": cursor}).json()
            assert len(page["stragglers"]) <= 1 and page["outstanding"] == len(tried)
            paged += [s["account_id"] for s in page["stragglers"]]
            cursor = page["stragglers_next_cursor"]
        assert sorted(paged) == sorted(hung[n] for n in tried)

        # Outstanding past DISPATCH_STRAGGLER_ALERT_S: the alert, once.
        def alerted():
            got = [e for e in bus_events(stack, "govmedia.dispatch.retraction.stragglers", ev.RetractionStragglers)
                   if e.item_id == item]
            return got or None
        [alert] = eventually(alerted, timeout=30)
        # It names every dead client; on a loaded machine a healthy client's kill may still have
        # been on its way at the alert's moment (no timing assumed here), never a dead one missed.
        assert alert.targets == report["targets"] and alert.unit_id == unit["id"]
        named = {s.account_id for s in alert.stragglers}
        assert named >= {hung[n] for n in tried} and named <= {hung[n] for n in tried} | set(healthy.values())
        assert alert.outstanding == len(named)
        assert disp.get(f"/v1/retractions/{item}").json()["stragglers_alerted_at"]

        # The dead endpoint comes back: after the cool-down one try goes through, then the rest.
        for name in hung:
            dead.overrides[name] = "ok"

        def completed():
            r = disp.get(f"/v1/retractions/{item}").json()
            return r if r["completed_at"] else None
        done = eventually(completed, timeout=60)
        assert done["confirmed"] == done["targets"] and done["outstanding"] == 0
        time.sleep(1.5)  # the watch runs on: still one alert
        assert len([e for e in bus_events(stack, "govmedia.dispatch.retraction.stragglers", ev.RetractionStragglers)
                    if e.item_id == item]) == 1

        # No client ends holding the item; none that never got it was sent a kill.
        for name in healthy:
            assert receiver.holds(name) == set() and len(receiver.got(name, "retracted")) == 1
        for name in hung:
            assert dead.holds(name) == set()
            if not dead.got(name):
                assert dead.got(name, "retracted") == []
        pub = disp.get(f"/v1/publications/{item}").json()
        assert pub["counts"]["acknowledged"] == len(healthy) and pub["counts"]["failed"] == 0
        assert pub["counts"]["cancelled"] + pub["counts"]["acknowledged"] + pub["counts"]["pending"] == 28
        assert receiver.errors == [] and dead.errors == []

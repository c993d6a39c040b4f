"""Stream clients over the bidirectional gRPC `Connect` (cursor first, then acknowledgements
and metrics on the same stream), beside `Subscribe`, `Ack` and SSE: kills first on
reconnect, a redelivered publish recognisably the same, a kill that wins however late the
publish, embargoes, each client acknowledging only its own deliveries, and client metrics
(increments with a report id: counted once) summed per platform and day and announced on
the bus."""
from __future__ import annotations

import json
import queue
import threading
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import grpc
import pytest

from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.db import new_id
from tests.helpers import assert_error, client, eventually, login
from tests.test_dispatch import (
    FAST_RETRIES, bus_events, client_token, counts_reach, demo_unit, item_approval, publish, register, retract,
    wait_known,
)

SERVICES = ("account", "dispatch")
APPROVED = "govmedia.review.item.approved"
SHANGHAI = ZoneInfo("Asia/Shanghai")
ENV = {**FAST_RETRIES, "DISPATCH_METRICS_FLUSH_S": "0.3"}


class Conn:
    """One client's Connect stream: messages go out from a queue, what comes back is sorted
    into events and receipts by a reader thread."""

    def __init__(self, stack, token: str, cursor: int = 0, first: pb.ClientMessage | None = None):
        self.out: queue.Queue = queue.Queue()
        self.events: queue.Queue = queue.Queue()
        self.receipts: queue.Queue = queue.Queue()
        self.channel = grpc.insecure_channel(stack.services["dispatch"].grpc_target)
        stub = pb_grpc.DispatchServiceStub(self.channel)
        hello = first or pb.ClientMessage(hello=pb.SubscribeRequest(cursor=cursor))

        def requests():
            yield hello
            while (message := self.out.get()) is not None:
                yield message

        self.call = stub.Connect(requests(), metadata=(("authorization", f"Bearer {token}"),), timeout=90)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for message in self.call:
                kind = message.WhichOneof("message")
                (self.events if kind == "event" else self.receipts).put(getattr(message, kind))
        except grpc.RpcError as exc:
            self.events.put(exc)
            self.receipts.put(exc)

    def event(self, timeout: float = 20) -> pb.ClientEvent:
        got = self.events.get(timeout=timeout)
        if isinstance(got, grpc.RpcError):
            raise got
        return got

    def no_event(self, wait: float) -> bool:
        try:
            self.events.get(timeout=wait)
        except queue.Empty:
            return True
        return False

    def ack(self, ids) -> pb.AckReceipt:
        self.out.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=list(ids))))
        return self.receipts.get(timeout=20)

    def metrics(self, report: pb.MetricsReport) -> pb.MetricsReceipt:
        self.out.put(pb.ClientMessage(metrics=report))
        return self.receipts.get(timeout=20)

    def close(self):
        self.out.put(None)
        self.call.cancel()
        self.channel.close()


def approve_item(stack, item_id: str, unit_id: str, targets: dict, **snapshot) -> None:
    publish(stack, APPROVED, item_approval(item_id, unit_id, targets, **snapshot), item_id)


def test_connect_kills_first_redelivery_and_kill_wins(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env=ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "conn-a", {"mode": "stream"}, platform="app")
    b = register(ops, unit["id"], "conn-b", {"mode": "stream"}, platform="web")
    ta, tb = client_token(stack, a), client_token(stack, b)
    wait_known(disp, [a["id"], b["id"]])

    one = new_id()
    approve_item(stack, one, unit["id"], {"accounts": [a["id"], b["id"]]}, subtitle="摘要")
    ca, cb = Conn(stack, ta), Conn(stack, tb)
    ea, eb = ca.event(), cb.event()
    assert ea.item_id == eb.item_id == one and ea.type.endswith(".published") and ea.version == 1
    data = json.loads(ea.data)
    assert data["format"] == "app" and data["notification"]["summary"] == "摘要" and data["account_id"] == a["id"]
    assert json.loads(eb.data)["format"] == "generic"
    # someone else's delivery: refused in the receipt, nothing recorded, the stream goes on
    refused = ca.ack([eb.delivery_id])
    assert refused.error_code == "other_account" and refused.acknowledged == 0
    assert ca.ack(["nope"]).error_code == "delivery_not_found"
    receipt = ca.ack([ea.delivery_id])
    assert receipt.acknowledged == 1 and not receipt.error_code and list(receipt.delivery_ids) == [ea.delivery_id]
    assert ca.ack([ea.delivery_id]).acknowledged == 0  # again: nothing new
    counts_reach(disp, one, acknowledged=1, delivered=1)
    cb.close()  # b goes offline without acknowledging

    # While b is offline: `one` is retracted, `two` published to both, `three` published and
    # retracted before b ever saw it.
    retract(stack, one, unit["id"], "撤回")
    eventually(lambda: disp.get(f"/v1/retractions/{one}").status_code == 200)
    kill_a = ca.event()  # a, online, gets the kill at once
    assert kill_a.type.endswith(".retracted") and kill_a.item_id == one and json.loads(kill_a.data)["reason"] == "撤回"
    two, three = new_id(), new_id()
    approve_item(stack, two, unit["id"], {"accounts": [a["id"], b["id"]]})
    approve_item(stack, three, unit["id"], {"accounts": [b["id"]]})
    counts_reach(disp, three, pending=1)
    retract(stack, three, unit["id"])
    eventually(lambda: disp.get(f"/v1/retractions/{three}").status_code == 200)
    ev_two = ca.event()
    assert ev_two.item_id == two
    assert ca.ack([kill_a.delivery_id, ev_two.delivery_id]).acknowledged == 2

    # b reconnects with its cursor: the kill first, then what it missed; `three` never
    # (cancelled before it went out: no publish, and no kill needed).
    cb = Conn(stack, tb, cursor=eb.seq)
    first, nxt = cb.event(), cb.event()
    assert first.type.endswith(".retracted") and first.item_id == one
    assert nxt.type.endswith(".published") and nxt.item_id == two
    assert cb.no_event(1.0)
    r3 = disp.get(f"/v1/retractions/{three}").json()
    assert r3["targets"] == 0 and r3["completed_at"]
    assert disp.get(f"/v1/publications/{three}").json()["counts"]["cancelled"] == 1
    cb.close()  # not acknowledged

    # Again from the start: the kill (not acknowledged) first, the publish of `two` again with
    # the same event id, and never the publish of the retracted item, however late. This time
    # the client asks for refusals only: its accepted acknowledgement gets no receipt.
    cb = Conn(stack, tb, first=pb.ClientMessage(hello=pb.SubscribeRequest(cursor=0, refusals_only=True)))
    again = [cb.event(), cb.event()]
    assert [e.type.rsplit(".", 1)[1] for e in again] == ["retracted", "published"]
    assert again[0].event_id == first.event_id and again[1].event_id == nxt.event_id and again[1].item_id == two
    assert cb.no_event(1.0)
    cb.out.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[e.delivery_id for e in again])))
    eventually(lambda: disp.get(f"/v1/retractions/{one}").json()["completed_at"])
    assert disp.get(f"/v1/retractions/{one}").json()["confirmed"] == 2
    refused = cb.ack([ea.delivery_id])  # the first receipt on this stream is the refusal
    assert refused.error_code == "other_account" and list(refused.delivery_ids) == [ea.delivery_id]

    # An embargo holds on streams too; a kill during a push on a stream: the client ends
    # without the item.
    four = new_id()
    approve_item(stack, four, unit["id"], {"accounts": [a["id"]]}, publish_at=(
        datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat())
    assert ca.no_event(1.5)
    held = ca.event()
    assert held.item_id == four and json.loads(held.data)["publish_at"]
    retract(stack, four, unit["id"])
    late = ca.event()
    assert late.type.endswith(".retracted") and late.item_id == four
    assert ca.ack([held.delivery_id, late.delivery_id]).acknowledged == 2
    eventually(lambda: disp.get(f"/v1/retractions/{four}").json()["completed_at"])

    # Refusals before the stream starts, with the stable code.
    bad = Conn(stack, ops_token)
    with pytest.raises(grpc.RpcError) as err:
        bad.event()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert dict(err.value.trailing_metadata())["error-code"] == "client_required"
    bad = Conn(stack, ta, first=pb.ClientMessage(ack=pb.AckRequest(delivery_ids=["x"])))
    with pytest.raises(grpc.RpcError) as err:
        bad.event()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(err.value.trailing_metadata())["error-code"] == "hello_required"
    for c in (ca, cb):
        c.close()


def test_client_metrics_and_acks_of_many_streams(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env=ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    clients = [register(ops, unit["id"], f"many-{i}", {"mode": "stream"}, platform=("app", "web")[i % 2])
               for i in range(6)]
    tokens = [client_token(stack, c) for c in clients]
    wait_known(disp, [c["id"] for c in clients])
    item, other = new_id(), new_id()
    approve_item(stack, item, unit["id"], {"accounts": [c["id"] for c in clients]})
    approve_item(stack, other, unit["id"], {"accounts": [clients[0]["id"]]})

    # Six streams acknowledge at the same moment: recorded together, each its own. Two first
    # send what is refused (a NUL, more than 1,000 ids): refused on their own stream before
    # they join the shared transaction, so the others' acknowledgements are not touched.
    conns = [Conn(stack, t) for t in tokens]
    got = [c.event() for c in conns]
    assert {e.item_id for e in got} == {item}
    extra = conns[0].event()
    assert extra.item_id == other
    conns[1].out.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[got[1].delivery_id + "\x00"])))
    conns[2].out.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[f"d{i}" for i in range(1001)])))
    for c, e in zip(conns, got):
        c.out.put(pb.ClientMessage(ack=pb.AckRequest(delivery_ids=[e.delivery_id])))
    assert conns[1].receipts.get(timeout=20).error_code == "invalid_character"
    assert conns[2].receipts.get(timeout=20).error_code == "validation_failed"
    receipts = [c.receipts.get(timeout=20) for c in conns]
    assert all(r.acknowledged == 1 and not r.error_code for r in receipts)
    counts_reach(disp, item, acknowledged=6)
    acked = [d for e in bus_events(stack, "govmedia.dispatch.deliveries.acknowledged", ev.DeliveriesAcknowledged)
             for d in e.deliveries]
    assert sorted(d.delivery_id for d in acked) == sorted(e.delivery_id for e in got)  # each once

    # Metrics: increments with a report id, on the stream, over gRPC unary and REST.
    today = datetime.now(SHANGHAI).date().isoformat()
    yesterday = (datetime.now(SHANGHAI).date() - timedelta(days=1)).isoformat()
    report = pb.MetricsReport(report_id="r-1", entries=[pb.MetricsEntry(item_id=item, reads=10, likes=2)])
    first = conns[0].metrics(report)
    assert first.accepted and not first.duplicate and first.entries == 1
    again = conns[0].metrics(report)  # redelivered: counted once
    assert again.duplicate and not again.accepted
    unknown = conns[1].metrics(pb.MetricsReport(report_id="r-x", entries=[pb.MetricsEntry(item_id=other, reads=1)]))
    assert unknown.error_code == "item_not_delivered" and not unknown.accepted
    nul = conns[1].metrics(pb.MetricsReport(report_id="r-\x00", entries=[pb.MetricsEntry(item_id=item, reads=1)]))
    assert nul.error_code == "invalid_character" and not nul.accepted
    md = (("authorization", f"Bearer {tokens[1]}"),)
    with grpc.insecure_channel(stack.services["dispatch"].grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        unary = stub.ReportMetrics(pb.MetricsReport(report_id="r-1", entries=[  # another client's "r-1"
            pb.MetricsEntry(item_id=item, reads=5, shares=1, day=yesterday),
            pb.MetricsEntry(item_id=item, reads=1, comments=3)]), metadata=md)
        assert unary.accepted and unary.entries == 2
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportMetrics(pb.MetricsReport(report_id="r-2", entries=[pb.MetricsEntry(item_id=item, reads=-1)]),
                               metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportMetrics(pb.MetricsReport(report_id="r-3", entries=[pb.MetricsEntry(item_id=item)]),
                               metadata=(("authorization", f"Bearer {ops_token}"),))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    rest = client(stack, "dispatch", tokens[2])
    body = {"report_id": "web-7", "entries": [{"item_id": item, "reads": 4, "likes": 1, "day": today}]}
    assert rest.post("/v1/feed/metrics", json=body).json() == {"report_id": "web-7", "accepted": True,
                                                                "duplicate": False, "entries": 1}
    assert rest.post("/v1/feed/metrics", json=body).json()["duplicate"] is True
    assert_error(rest.post("/v1/feed/metrics", json={"report_id": "x", "entries": [{"item_id": item, "reads": -3}]}),
                 422, "validation_failed")
    assert_error(rest.post("/v1/feed/metrics", json={"report_id": "y", "entries": [
        {"item_id": item, "reads": 1, "day": "2001-01-01"}]}), 422, "invalid_day")
    assert_error(rest.post("/v1/feed/metrics", json={"report_id": "z", "entries": [{"item_id": other, "reads": 1}]}),
                 422, "item_not_delivered")
    assert_error(disp.post("/v1/feed/metrics", json=body), 403, "client_required")
    # z was refused: its id is free again
    assert rest.post("/v1/feed/metrics", json={"report_id": "z", "entries": [{"item_id": item}]}).json()["accepted"]

    m = disp.get(f"/v1/publications/{item}/metrics").json()
    assert m["totals"] == {"reads": 20, "likes": 3, "shares": 1, "comments": 3}
    platforms = {p["platform"]: p for p in m["platforms"]}
    assert platforms["app"]["reads"] == 14 and platforms["web"]["reads"] == 6  # clients 0 and 2 are apps
    by_day = {(d["day"], d["platform"]): d["reads"] for d in m["days"]}
    assert by_day == {(today, "app"): 14, (yesterday, "web"): 5, (today, "web"): 1}
    for user in ("editor", "regulator", "supervisor"):
        assert client(stack, "dispatch", login(stack, user)).get(f"/v1/publications/{item}/metrics").status_code == 200
    assert_error(client(stack, "dispatch", tokens[0]).get(f"/v1/publications/{item}/metrics"), 403,
                 "client_not_allowed")
    assert_error(disp.get("/v1/publications/nope/metrics"), 404, "publication_not_found")
    with grpc.insecure_channel(stack.services["dispatch"].grpc_target) as channel:
        stub = pb_grpc.DispatchServiceStub(channel)
        pm = stub.GetPublicationMetrics(pb.ItemRequest(item_id=item), metadata=(("authorization", f"Bearer {ops_token}"),))
        assert pm.totals.reads == 20 and len(pm.days) == 3

    # On the bus, in batches: every increment once, summing to the totals.
    def announced():
        entries = [e for msg in bus_events(stack, "govmedia.dispatch.metrics.reported", ev.MetricsReported)
                   for e in msg.entries if e.item_id == item]
        return entries if sum(e.reads for e in entries) == 20 else None
    entries = eventually(announced, timeout=30)
    assert sum(e.likes for e in entries) == 3 and sum(e.comments for e in entries) == 3
    assert {e.account_id for e in entries} == {clients[0]["id"], clients[1]["id"], clients[2]["id"]}
    assert all(e.item_unit_id == unit["id"] and e.unit_id == unit["id"] for e in entries)
    time.sleep(1)
    assert sum(e.reads for msg in bus_events(stack, "govmedia.dispatch.metrics.reported", ev.MetricsReported)
               for e in msg.entries if e.item_id == item) == 20  # nothing announced twice
    for c in conns:
        c.close()

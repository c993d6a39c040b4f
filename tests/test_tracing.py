"""One trace per push (issue 7): the editor's REST submit, the three review decisions (each
made in a request of its own), the approval event, dispatch and each client's delivery, and
the account service's record of it, all in the trace of the submit, with every span's parent
in that trace. The services export over OTLP to an in-memory collector, as in the cluster."""
from __future__ import annotations

import pytest

from tests.helpers import client, eventually, login
from tests.otlp_receiver import OtlpReceiver
from tests.test_e2e import CHECKS, register_accounts
from tests.webhook_receiver import Receiver

SERVER, CLIENT, PRODUCER, CONSUMER = 2, 3, 4, 5


@pytest.fixture
def collector():
    with OtlpReceiver() as otlp:
        yield otlp


def test_a_push_is_one_trace_from_submit_to_each_delivery(stack_factory, collector):
    # The trace does not depend on the database: SQLite only, to keep the suite short.
    stack = stack_factory("sqlite", only=("account", "content", "review", "dispatch"), env=collector.env())
    with Receiver() as receiver:
        ops = client(stack, "account", login(stack, "ops"))
        hook_account, _ = register_accounts(stack, ops, receiver)
        editor = client(stack, "content", login(stack, "editor"))
        draft = editor.post("/v1/drafts", json={"title": "关于开展政务公开日活动的通知", "body": "各单位：现将有关事项通知如下。",
                                                "category": "government", "targets": {"scope": "all"}})
        assert draft.status_code == 201, draft.text
        item_id = draft.json()["id"]
        assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200

        reviewers = {n: client(stack, "review", login(stack, n)) for n in ("reviewer1", "reviewer2", "reviewer3")}
        review = eventually(lambda: reviewers["reviewer1"].get("/v1/reviews", params={"item_id": item_id})
                            .json()["items"])[0]
        for name in ("reviewer1", "reviewer2", "reviewer3"):
            decided = reviewers[name].post(f"/v1/reviews/{review['id']}/decisions",
                                           json={"decision": "approve", "comment": "同意", "checks": CHECKS})
            assert decided.status_code == 200, decided.text
        delivered = eventually(lambda: [e for e in receiver.events["weibo-1"] if e["data"]["item_id"] == item_id])
        assert delivered[0]["type"].endswith("published")

    submit = eventually(lambda: [s for s in collector.spans if s.service == "govmedia-content" and s.kind == SERVER
                                 and s.name == "POST /v1/drafts/{draft_id}/submit"])
    trace_id = submit[0].trace_id

    def whole_trace():
        spans = collector.trace(trace_id)
        names = {(s.service, s.name) for s in spans}
        wanted = {("govmedia-dispatch", "process govmedia.review.item.approved"),
                  ("govmedia-content", "process govmedia.review.item.approved"),
                  ("govmedia-account", "process govmedia.dispatch.deliveries.acknowledged")}
        assert wanted <= names and any(s.kind == CLIENT and s.service == "govmedia-dispatch" for s in spans), \
            sorted(names)
        return spans

    spans = eventually(whole_trace, timeout=30)
    by_id = {s.span_id: s for s in spans}
    assert {s.service for s in spans} >= {"govmedia-content", "govmedia-review", "govmedia-dispatch",
                                         "govmedia-account"}
    # Every span but the submit's own request hangs from another span of this very trace.
    roots = [s for s in spans if s.parent_id not in by_id]
    assert [(r.service, r.name) for r in roots] == [("govmedia-content", "POST /v1/drafts/{draft_id}/submit")]

    def parent(span):
        return by_id[span.parent_id]

    def one(service, name, kind=None):
        found = [s for s in spans if s.service == service and s.name == name and kind in (None, s.kind)]
        assert found, (service, name, sorted({(s.service, s.name) for s in spans}))
        return found

    # An event carries the context it was emitted in: its consumers hang from that span, its
    # relay's send span beside them.
    [opened] = one("govmedia-review", "process govmedia.content.draft.submitted", CONSUMER)
    assert parent(opened) == submit[0]
    [submitted_sent] = one("govmedia-content", "send govmedia.content.draft.submitted", PRODUCER)
    assert parent(submitted_sent) == submit[0]
    decisions = one("govmedia-review", "review decide")
    assert len(decisions) == 3 and all(parent(d) is opened for d in decisions)
    # Each decision was a request of its own (its own trace), linked from the push's trace.
    assert all(len(d.links) == 1 and d.links[0] != trace_id for d in decisions)
    [approved_sent] = one("govmedia-review", "send govmedia.review.item.approved", PRODUCER)
    assert parent(approved_sent) in decisions
    for service in ("govmedia-dispatch", "govmedia-content"):
        [consumed] = one(service, "process govmedia.review.item.approved", CONSUMER)
        assert parent(consumed) is parent(approved_sent)
    [delivery] = [s for s in spans if s.service == "govmedia-dispatch" and s.kind == CLIENT
                  and s.attribute("govmedia.account_id") == hook_account["id"]]
    assert delivery.attribute("http.request.method") == "POST"
    # The client got the trace too, in the delivery's own traceparent.
    headers = receiver.headers["weibo-1"][0]
    assert headers["traceparent"].split("-")[1:3] == [trace_id, delivery.span_id]
    [recorded] = one("govmedia-account", "process govmedia.dispatch.deliveries.acknowledged", CONSUMER)
    assert recorded.trace_id == trace_id

"""The main flow across all five services, each a separate process, over real HTTP and
gRPC with a real nats-server: draft → three approvals → webhook and stream delivery →
retraction → kill acknowledged; with a service killed and restarted mid-flow."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from govmedia.dispatch.v1 import dispatch_pb2 as dpb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as dpb_grpc
from govmedia.review.v1 import review_pb2 as rpb
from govmedia.review.v1 import review_pb2_grpc as rpb_grpc
from tests.helpers import assert_error, client, client_token, eventually, login
from tests.webhook_receiver import Receiver, client_secret

pytestmark = pytest.mark.e2e

RESPONSIBLE = {"principal": "张三", "deputy": "李四", "chief_editor": "王五"}
CHECKS = {"policy": True, "wording": True, "secrecy": True, "law": True}


def register_accounts(stack, ops, receiver) -> tuple[dict, dict]:
    unit_id = ops.get("/v1/units").json()["items"][0]["id"]
    hook = ops.post("/v1/accounts", json={
        "unit_id": unit_id, "platform": "weibo", "name": "示范省发布", "handle": "e2e-weibo", "opened_on": "2025-01-02",
        "responsible": RESPONSIBLE,
        "delivery": {"mode": "webhook", "url": receiver.url("weibo-1"), "secret": client_secret("weibo-1")},
    })
    assert hook.status_code == 201, hook.text
    app = ops.post("/v1/accounts", json={
        "unit_id": unit_id, "platform": "app", "name": "示范省政务客户端", "handle": "e2e-app", "opened_on": "2025-01-02",
        "responsible": RESPONSIBLE, "delivery": {"mode": "stream"},
    })
    assert app.status_code == 201, app.text
    return hook.json(), app.json()


async def stream_until(stack, token: str, cursor: int, want, timeout: float = 30) -> list:
    """Open the gRPC stream from `cursor`, collect events until `want(events)` holds, ack them."""
    events = []
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(stack.services["dispatch"].grpc_target) as channel:
        stub = dpb_grpc.DispatchServiceStub(channel)
        call = stub.Subscribe(dpb.SubscribeRequest(cursor=cursor), metadata=md)

        async def read():
            async for event in call:
                events.append(event)
                if want(events):
                    return

        try:
            await asyncio.wait_for(read(), timeout)
        finally:
            call.cancel()
        await stub.Ack(dpb.AckRequest(delivery_ids=[e.delivery_id for e in events]), metadata=md)
    return events


def review_of(reviews, item_id: str) -> dict:
    found = reviews.get("/v1/reviews", params={"item_id": item_id}).json()["items"]
    open_ = [r for r in found if r["state"] == "in_review"]
    return open_[0] if open_ else None


async def test_push_review_dispatch_retract(stack_factory, db_backend):
    # As `make run` runs it: NATS in operator mode, each service on its own user, which may
    # publish only its own events (tests/test_nats_permissions.py).
    stack = stack_factory(db_backend, secure_nats=True)
    with Receiver() as receiver:
        ops = client(stack, "account", login(stack, "ops"))
        hook_account, app_account = register_accounts(stack, ops, receiver)
        app_token = client_token(stack, app_account)

        editor = client(stack, "content", login(stack, "editor"))
        draft = editor.post("/v1/drafts", json={"title": "关于开展政务公开日活动的通知", "body": "各单位：……",
                                                "category": "government", "targets": {"scope": "all"}})
        assert draft.status_code == 201, draft.text
        item_id = draft.json()["id"]
        updated = editor.put(f"/v1/drafts/{item_id}", json={"title": "关于开展2026年政务公开日活动的通知",
                                                            "body": "各单位：现将有关事项通知如下。",
                                                            "targets": {"scope": "all"}},
                             headers={"If-Match": str(draft.json()["version"])})
        assert updated.status_code == 200, updated.text
        assert_error(editor.put(f"/v1/drafts/{item_id}", json={"title": "旧版本上的修改", "body": "x", "targets": {"scope": "all"}},
                                headers={"If-Match": str(draft.json()["version"])}), 409, "version_conflict")
        assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200

        # The review service is killed mid-flow and restarted: the submitted draft is not lost.
        stack.restart("review", kill=True)
        reviewers = {n: client(stack, "review", login(stack, n)) for n in ("reviewer1", "reviewer2", "reviewer3")}
        # An event the killed process had in hand comes back after the consumers' ack wait.
        review = eventually(lambda: review_of(reviewers["reviewer1"], item_id), timeout=45)
        assert_error(reviewers["reviewer2"].post(f"/v1/reviews/{review['id']}/decisions",
                                                 json={"decision": "approve", "checks": CHECKS}), 403, "not_level_holder")
        assert_error(client(stack, "review", login(stack, "editor")).post(
            f"/v1/reviews/{review['id']}/decisions", json={"decision": "approve", "checks": CHECKS}), 403,
            "author_cannot_review")
        r1 = reviewers["reviewer1"].post(f"/v1/reviews/{review['id']}/decisions",
                                         json={"decision": "approve", "comment": "同意", "checks": CHECKS})
        assert r1.status_code == 200, r1.text
        # Level 2 over gRPC: the same use case behind both transports.
        async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
            stub = rpb_grpc.ReviewServiceStub(channel)
            decided = await stub.Decide(
                rpb.DecideRequest(review_id=review["id"], decision="approve", comment="同意",
                                  checks=rpb.Checks(policy=True, wording=True, secrecy=True, law=True)),
                metadata=(("authorization", f"Bearer {login(stack, 'reviewer2')}"),))
            assert decided.current_level == 3
        r3 = reviewers["reviewer3"].post(f"/v1/reviews/{review['id']}/decisions",
                                         json={"decision": "approve", "comment": "同意发布", "checks": CHECKS})
        assert r3.status_code == 200 and r3.json()["state"] == "approved", r3.text

        # One-key push: the webhook client and the stream client both get it.
        eventually(lambda: receiver.holds("weibo-1") == {item_id}, timeout=30)
        [published] = receiver.got("weibo-1")
        assert published["type"].endswith(".published") and published["data"]["version"] == 2
        assert published["data"]["title"] == "关于开展2026年政务公开日活动的通知"
        got = await stream_until(stack, app_token, 0, lambda evs: any(e.item_id == item_id for e in evs))
        cursor = max(e.seq for e in got)
        assert got[-1].type.endswith(".published")
        dispatch = client(stack, "dispatch", login(stack, "ops"))
        pub = eventually(lambda: (p := dispatch.get(f"/v1/publications/{item_id}").json())["counts"]["acknowledged"] == 2 and p)
        assert pub["targets"] == 2 and pub["counts"]["failed"] == 0
        assert eventually(lambda: editor.get(f"/v1/drafts/{item_id}").json()["status"] == "approved")

        # One-key retraction: only the unit's reviewer3 or ops, with a reason.
        assert_error(editor.post(f"/v1/items/{item_id}/retract", json={"reason": "有误"}), 403, "role_required")
        r3_content = client(stack, "content", login(stack, "reviewer3"))
        assert_error(r3_content.post(f"/v1/items/{item_id}/retract", json={}), 422, "validation_failed")
        retract = r3_content.post(f"/v1/items/{item_id}/retract", json={"reason": "数据有误，撤回更正"})
        assert retract.status_code == 200, retract.text
        # Dispatch is killed right after the retraction and restarted: the kill still goes out.
        stack.restart("dispatch", kill=True)
        eventually(lambda: receiver.holds("weibo-1") == set(), timeout=45)
        kills = await stream_until(stack, app_token, cursor, lambda evs: any(e.type.endswith(".retracted") for e in evs))
        assert kills[0].type.endswith(".retracted") and kills[0].item_id == item_id
        dispatch = client(stack, "dispatch", login(stack, "ops"))
        done = eventually(lambda: (r := dispatch.get(f"/v1/retractions/{item_id}").json())["completed_at"] and r, timeout=30)
        assert done["targets"] == 2 and done["confirmed"] == 2 and done["outstanding"] == 0
        assert done["reason"] == "数据有误，撤回更正"
        # Every client was sent each event exactly once, as far as it can tell (ids de-duplicated).
        types = [e["type"] for e in receiver.events["weibo-1"]]
        assert len(types) == 2 and types[1].endswith(".retracted")
        assert not receiver.errors


async def test_reject_returns_the_draft_to_its_author(stack_factory):
    stack = stack_factory("sqlite", only=("account", "content", "review"))
    editor = client(stack, "content", login(stack, "editor"))
    item_id = editor.post("/v1/drafts", json={"title": "标题", "body": "正文", "targets": {"scope": "all"}}).json()["id"]
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    r1 = client(stack, "review", login(stack, "reviewer1"))
    review = eventually(lambda: review_of(r1, item_id))
    assert_error(r1.post(f"/v1/reviews/{review['id']}/decisions", json={"decision": "reject"}), 422, "comment_required")
    rejected = r1.post(f"/v1/reviews/{review['id']}/decisions", json={"decision": "reject", "comment": "标题不规范"})
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    assert eventually(lambda: editor.get(f"/v1/drafts/{item_id}").json()["status"] == "rejected")

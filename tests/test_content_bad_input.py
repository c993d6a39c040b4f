"""Bad input to drafting and reviewing, against real processes on SQLite and PostgreSQL:
bodies too large (413, declared or sent chunked), wrong content types (415), invalid UTF-8
and JSON nested too deep (400), text the database cannot hold (U+0000) and fields over their
limits (422) — over REST and gRPC, on drafts, edits, the public clue intake and review
decisions. Each gets the platform's error body with a stable code, and nothing is stored."""
from __future__ import annotations

import asyncio
import json

import grpc
import httpx
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.events.v1 import events_pb2 as ev
from tests.helpers import assert_error
from tests.test_content_review import ALL_CHECKS, DRAFT, People, open_review

JSON = {"Content-Type": "application/json"}
MiB = 1024 * 1024


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "content", "review"))


def raw(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def chunked(body: bytes, size: int = 64 * 1024):
    """The body sent without a Content-Length."""
    for start in range(0, len(body), size):
        yield body[start:start + size]


def refusals(base: dict) -> list[tuple[str, bytes, dict, int, str]]:
    """(what, body, headers, status, code) for a JSON write whose good form is `base`."""
    too_big = raw({**base, "body": "长" * 400_000})  # 1.2 MB: past the front door's 1 MiB
    return [
        ("declared too large", too_big, JSON, 413, "payload_too_large"),
        ("text/plain", raw(base), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("xml", raw(base), {"Content-Type": "application/xml"}, 415, "unsupported_media_type"),
        ("no content type", raw(base), {"Content-Type": ""}, 415, "unsupported_media_type"),
        ("invalid UTF-8", raw(base)[:-2] + b', "x": "\xff\xfe"}', JSON, 400, "invalid_encoding"),
        ("nested too deep", b"[" * 100 + b"]" * 100, JSON, 400, "json_too_deep"),
        ("deep inside a field", raw(base)[:-1] + b', "extra": ' + b"{\"a\": " * 40 + b"1" + b"}" * 40 + b"}", JSON,
         400, "json_too_deep"),
        ("not JSON", b"title=x&body=y", JSON, 422, "validation_failed"),
        ("cut short", raw(base)[:20], JSON, 422, "validation_failed"),
        ("an array", b"[1, 2]", JSON, 422, "validation_failed"),
        ("NUL in text", raw({**base, "title": "通知\u0000"}), JSON, 400, "invalid_character"),
    ]


def test_drafts_and_edits_refuse_bad_bodies_and_store_nothing(stack):
    people = People(stack)
    editor = people.content("editor")
    base = {**DRAFT}
    for what, body, headers, status, code in refusals(base) + [
        ("body over 200,000 characters", raw({**base, "body": "长" * 200_001}), JSON, 422, "validation_failed"),
        ("NUL in a target", raw({**base, "targets": {"regions": ["r\u0000"]}}), JSON, 400, "invalid_character"),
        ("NUL in the source", raw({**base, "source": {"name": "新华社\u0000"}}), JSON, 400, "invalid_character"),
    ]:
        r = editor.post("/v1/drafts", content=body, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, (what, r.status_code, r.text[:300])
    # too large and sent chunked: counted as it arrives and refused
    r = editor.post("/v1/drafts", content=chunked(raw({**base, "body": "长" * 400_000})), headers=JSON)
    assert_error(r, 413, "payload_too_large")
    assert editor.get("/v1/drafts").json()["items"] == []

    # an edit refused the same way leaves the draft at its version, with one revision and one audit entry
    draft = editor.post("/v1/drafts", json=base).json()
    path, if_match = f"/v1/drafts/{draft['id']}", {"If-Match": "1"}
    for what, body, headers, status, code in refusals(base):
        r = editor.put(path, content=body, headers={**headers, **if_match})
        assert r.status_code == status and r.json()["error"]["code"] == code, (what, r.status_code, r.text[:300])
    assert editor.get(path).json()["version"] == 1
    assert len(editor.get(f"{path}/revisions").json()["items"]) == 1
    assert [e["action"] for e in editor.get(f"{path}/audit").json()["items"]] == ["created"]
    # a retraction reason is text too
    assert_error(people.content("reviewer3").post(f"/v1/items/{draft['id']}/retract", json={"reason": "错\u0000"}),
                 400, "invalid_character")

    # gRPC: the same limits on the same use case; a message past gRPC's own limit never reaches it
    async def over_grpc():
        md = (("authorization", f"Bearer {people.token('editor')}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            fields = lambda **f: cpb.DraftFields(**{"title": DRAFT["title"], "body": DRAFT["body"],  # noqa: E731
                                                   "targets": ev.Targets(all=True), **f})
            for bad, code in ((fields(body="长" * 200_001), "validation_failed"), (fields(title=""), "validation_failed"),
                              (fields(title="通知\u0000"), "invalid_character")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CreateDraft(cpb.CreateDraftRequest(fields=bad), metadata=md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(err.value.trailing_metadata())["error-code"] == code
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateDraft(cpb.CreateDraftRequest(fields=fields(body="x" * (5 * MiB))), metadata=md)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    asyncio.run(over_grpc())
    assert [d["id"] for d in editor.get("/v1/drafts").json()["items"]] == [draft["id"]]


def test_public_clue_intake_refuses_bad_bodies_and_stores_nothing(stack):
    people = People(stack)
    unit_id = people.account("ops").get("/v1/units").json()["items"][0]["id"]
    public = httpx.Client(base_url=stack.services["content"].base_url, timeout=15)
    base = {"unit_id": unit_id, "title": "某路段井盖缺失", "content": "人民路口井盖缺失。"}
    # refused at the front door, before the intake's rate limit counts them
    for what, body, headers, status, code in refusals(base)[:7]:
        r = public.post("/v1/clues", content=body, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, (what, r.status_code, r.text[:300])
    for bad in ({**base, "content": "井盖\u0000"}, {**base, "contact": {"name": "张三\u0000", "phone": "13812348000"}}):
        assert_error(public.post("/v1/clues", json=bad), 400, "invalid_character")
    assert people.content("editor").get("/v1/clues").json()["items"] == []


def test_review_decisions_refuse_bad_bodies_and_change_nothing(stack):
    people = People(stack)
    editor = people.content("editor")
    item_id = editor.post("/v1/drafts", json=DRAFT).json()["id"]
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    review = open_review(people, item_id, 1)
    reviewer = people.review("reviewer1")
    path = f"/v1/reviews/{review['id']}/decisions"
    base = {"decision": "approve", "checks": ALL_CHECKS}
    for what, body, headers, status, code in refusals(base) + [
        ("NUL in a rejection", raw({"decision": "reject", "comment": "退回\u0000"}), JSON, 400, "invalid_character"),
        ("a gate as a string", raw({**base, "checks": {**ALL_CHECKS, "law": "true"}}), JSON, 422, "validation_failed"),
    ]:
        r = reviewer.post(path, content=body, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code, (what, r.status_code, r.text[:300])
    assert_error(reviewer.post(path, json={"decision": "reject", "comment": "长" * 400_000}), 413, "payload_too_large")
    unchanged = reviewer.get(f"/v1/reviews/{review['id']}").json()
    assert (unchanged["state"], unchanged["current_level"]) == ("in_review", 1)
    assert all(lv["decision"] is None for lv in unchanged["levels"])
    assert [e["action"] for e in reviewer.get(f"/v1/reviews/{review['id']}/audit").json()["items"]] == ["opened"]
    # the good decision still goes through
    assert reviewer.post(path, json=base).status_code == 200

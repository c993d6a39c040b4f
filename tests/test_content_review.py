"""Content and review as real processes (with account and a real nats-server): drafting with
optimistic locking, the three-level review over events, rejection and resubmission,
retraction, refusals that change nothing, and the gRPC transports."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import grpc
import nats
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia.review.v1 import review_pb2 as rpb
from govmedia.review.v1 import review_pb2_grpc as rpb_grpc
from govmedia_kit.db import utcnow
from govmedia_kit.events import envelope_headers
from govmedia_kit.audit import append_only_ddl, drop_append_only_ddl
from tests.helpers import assert_error, client, db_dialect, eventually, login, service_db

ALL_CHECKS = {"policy": True, "wording": True, "secrecy": True, "law": True}
DRAFT = {
    "title": "关于做好春节期间安全生产工作的通知",
    "body": "各市、县人民政府，省政府各部门：……",
    "category": "government",
    "targets": {"scope": "all"},
}


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "content", "review"))


class People:
    """One REST client per demo user and service, signed in once."""

    def __init__(self, stack):
        self.stack = stack
        self.tokens = {}

    def token(self, username: str, password: str | None = None) -> str:
        if username not in self.tokens:
            self.tokens[username] = login(self.stack, username, *([password] if password else []))
        return self.tokens[username]

    def content(self, username: str):
        return client(self.stack, "content", self.token(username))

    def review(self, username: str):
        return client(self.stack, "review", self.token(username))

    def account(self, username: str):
        return client(self.stack, "account", self.token(username))


def open_review(people: People, item_id: str, version: int) -> dict:
    """The open review of `item_id` at `version`, once the submitted event has arrived."""
    def check():
        items = people.review("reviewer1").get("/v1/reviews", params={"item_id": item_id, "state": "in_review"}).json()["items"]
        return next((r for r in items if r["item_version"] == version), None)
    return eventually(check)


def decide(people: People, username: str, review_id: str, **body):
    return people.review(username).post(f"/v1/reviews/{review_id}/decisions", json=body)


def draft_status(people: People, item_id: str, status: str) -> dict:
    """The draft once it has reached `status` (review outcomes arrive as events)."""
    def check():
        draft = people.content("editor").get(f"/v1/drafts/{item_id}").json()
        return draft if draft["status"] == status else None
    return eventually(check)


def at_once(*calls) -> list:
    """Run the calls concurrently (each makes its own HTTP client) and return their responses."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: call(), calls))


async def last_event(stack, stream: str, subject: str, message_cls):
    nc = await nats.connect(stack.nats_url)
    try:
        msg = await nc.jetstream().get_last_msg(stream, subject)
        payload = message_cls()
        payload.ParseFromString(msg.data)
        return payload
    finally:
        await nc.close()


def test_draft_walks_through_three_levels_and_is_retracted(stack):
    people = People(stack)
    editor = people.content("editor")

    created = editor.post("/v1/drafts", json=DRAFT)
    assert created.status_code == 201, created.text
    draft = created.json()
    item_id = draft["id"]
    assert (draft["version"], draft["status"], created.headers["etag"]) == (1, "draft", '"1"')
    assert draft["targets"] == {"scope": "all"} and draft["source"] is None and not draft["reprint"]
    assert editor.get(f"/v1/drafts/{item_id}").headers["etag"] == '"1"'

    changed = {**DRAFT, "title": "关于做好春节期间安全生产工作的紧急通知",
               "source": {"name": "新华社", "url": "https://news.example.org/a"},
               "targets": {"platforms": ["weibo", "wechat"], "regions": ["r-1"]}}
    updated = editor.put(f"/v1/drafts/{item_id}", json=changed, headers={"If-Match": '"1"'})
    assert updated.status_code == 200, updated.text
    assert (updated.json()["version"], updated.headers["etag"]) == (2, '"2"')
    # a PUT that changes nothing keeps the version and stores no revision
    same = editor.put(f"/v1/drafts/{item_id}", json=changed, headers={"If-Match": "2"})
    assert same.status_code == 200 and same.json()["version"] == 2
    # naming a source made it a reprint (转载): the source stays, the title is the original's
    assert same.json()["reprint"] and same.json()["original_title"] == changed["title"]
    assert_error(editor.put(f"/v1/drafts/{item_id}", json={**changed, "title": "改过的标题"}, headers={"If-Match": "2"}),
                 422, "reprint_title_locked")
    assert_error(editor.put(f"/v1/drafts/{item_id}", json={**changed, "source": None}, headers={"If-Match": "2"}),
                 422, "reprint_source_required")

    first = editor.get(f"/v1/drafts/{item_id}/revisions", params={"limit": 1}).json()
    assert first["items"][0]["version"] == 1 and first["next_cursor"]
    second = editor.get(f"/v1/drafts/{item_id}/revisions", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    revision = second["items"][0]
    assert revision["version"] == 2 and second["next_cursor"] is None
    assert sorted(revision["changed"]) == ["source", "targets", "title"]
    assert revision["fields"]["title"] == changed["title"] and revision["editor_id"] == draft["author_id"]

    # two editors changing the same version at once: one wins, the other is told to refresh
    racing = [lambda n=n: people.content("editor").put(f"/v1/drafts/{item_id}", json={**changed, "body": f"版本{n}"},
                                                        headers={"If-Match": "2"}) for n in range(2)]
    raced = at_once(*racing)
    assert sorted(r.status_code for r in raced) == [200, 409], [r.text for r in raced]
    assert all(r.json()["error"]["code"] == "version_conflict" for r in raced if r.status_code == 409)
    assert len(editor.get(f"/v1/drafts/{item_id}/revisions").json()["items"]) == 3
    changed = {**changed, "body": next(r.json()["body"] for r in raced if r.status_code == 200)}

    submitted = editor.post(f"/v1/drafts/{item_id}/submit")
    assert submitted.status_code == 200 and submitted.json()["status"] == "in_review", submitted.text
    assert_error(editor.post(f"/v1/drafts/{item_id}/submit"), 409, "not_submittable")
    assert_error(editor.put(f"/v1/drafts/{item_id}", json=DRAFT, headers={"If-Match": "3"}), 409, "not_editable")

    review = open_review(people, item_id, 3)
    assert review["current_level"] == 1 and [lv["holder_role"] for lv in review["levels"]] == [
        "section_head", "deputy", "principal|chief_editor"]
    assert review["item"]["title"] == changed["title"] and review["item"]["targets"]["platforms"] == ["weibo", "wechat"]
    assert review["author_id"] == draft["author_id"] and review["unit_id"] == draft["unit_id"]
    mine = lambda who: [r["id"] for r in people.review(who).get("/v1/reviews", params={"mine": "true"}).json()["items"]]
    assert mine("reviewer1") == [review["id"]] and mine("reviewer2") == [] and mine("editor") == []

    # a double-clicked decision is stored once: the second is refused, whatever it read
    twice = at_once(*[lambda: decide(people, "reviewer1", review["id"], decision="approve", checks=ALL_CHECKS)] * 2)
    assert sorted(r.status_code for r in twice) in ([200, 403], [200, 409]), [r.text for r in twice]
    assert {r.json()["error"]["code"] for r in twice if r.status_code != 200} <= {"not_level_holder", "concurrent_change"}
    for level, reviewer in enumerate(("reviewer2", "reviewer3"), start=2):
        if level == 3:  # a draft never submitted has nothing to retract
            unsent = people.content("editor").post("/v1/drafts", json=DRAFT).json()["id"]
            assert_error(people.content("reviewer3").post(f"/v1/items/{unsent}/retract", json={"reason": "x"}),
                         409, "not_approved")
        answer = decide(people, reviewer, review["id"], decision="approve", checks=ALL_CHECKS, comment="同意")
        assert answer.status_code == 200, answer.text
        assert answer.json()["levels"][level - 1]["decision"] == "approve"
    assert mine("reviewer2") == []
    final = people.review("ops").get(f"/v1/reviews/{review['id']}").json()
    assert final["state"] == "approved"
    assert_error(decide(people, "reviewer3", review["id"], decision="approve", checks=ALL_CHECKS), 409, "review_closed")

    assert draft_status(people, item_id, "approved")["version"] == 3
    approved = asyncio.run(last_event(stack, "GOVMEDIA_REVIEW", "govmedia.review.item.approved", ev.ItemApproved))
    assert (approved.review_id, approved.item.item_id, approved.item.version) == (review["id"], item_id, 3)
    assert list(approved.approver_ids) == [lv["decided_by"] for lv in final["levels"]]
    assert len(set(approved.approver_ids)) == 3 and approved.item.targets.platforms == ["weibo", "wechat"]

    # one-key retraction: only the unit's reviewer3 (or ops), with a reason
    retract = lambda who, body: people.content(who).post(f"/v1/items/{item_id}/retract", json=body)
    assert_error(retract("editor", {"reason": "有误"}), 403, "role_required")
    assert_error(retract("reviewer3", {}), 422, "validation_failed")
    assert_error(retract("reviewer3", {"reason": "   "}), 422, "validation_failed")
    assert editor.get(f"/v1/drafts/{item_id}").json()["status"] == "approved"
    done = retract("reviewer3", {"reason": "数据有误，撤回更正"})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["retract_reason"]) == ("retracted", "数据有误，撤回更正")
    assert_error(retract("reviewer3", {"reason": "again"}), 409, "already_retracted")
    assert_error(retract("ops", {"reason": "again"}), 409, "already_retracted")
    killed = eventually(lambda: asyncio.run(
        last_event(stack, "GOVMEDIA_CONTENT", "govmedia.content.item.retracted", ev.ItemRetracted)))
    assert (killed.item_id, killed.version, killed.reason) == (item_id, 3, "数据有误，撤回更正")
    assert killed.unit_id == draft["unit_id"]

    # every action on the draft is in its hash-chained audit trail, and it verifies
    trail = editor.get(f"/v1/drafts/{item_id}/audit").json()
    actions = [e["action"] for e in trail["items"]]
    assert actions[:3] == ["created", "edited", "edited"] and actions[-3:] == ["submitted", "approved", "retracted"]
    assert trail["items"][1]["before"]["title"] == DRAFT["title"] and trail["items"][1]["after"]["title"] == changed["title"]
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(trail["items"], trail["items"][1:]))
    verify = lambda: people.content("ops").get(f"/v1/drafts/{item_id}/audit/verify").json()  # noqa: E731
    assert verify()["ok"] and verify()["entries"] == len(actions)
    kind, forged = db_dialect(stack, "content"), f"UPDATE audit_trail SET actor = 'x' WHERE stream_id = '{item_id}' AND seq = 2"
    with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError), match="append-only"):
        asyncio.run(service_db(stack, "content", forged))
    asyncio.run(service_db(stack, "content", *drop_append_only_ddl("audit_trail", kind), forged,
                           *append_only_ddl("audit_trail", kind)))
    assert verify()["first_broken"] == {"seq": 2, "reason": "hash_mismatch"}


def test_rejection_returns_the_draft_and_wrong_actors_change_nothing(stack):
    people = People(stack)
    editor = people.content("editor")
    ops_account = people.account("ops")

    # -- bad drafts are refused and nothing is stored
    before = len(editor.get("/v1/drafts").json()["items"])
    bad_bodies = [
        {k: v for k, v in DRAFT.items() if k != "title"},                      # missing field
        {k: v for k, v in DRAFT.items() if k != "targets"},                    # missing targets
        {**DRAFT, "title": 123},                                               # wrong type
        {**DRAFT, "title": "   "},                                             # blank
        {**DRAFT, "targets": {"scope": "some"}},                               # unknown scope
        {**DRAFT, "targets": {}},                                              # no target at all
        {**DRAFT, "targets": {"scope": "all", "platforms": ["weibo"]}},        # contradictory
        {**DRAFT, "targets": {"platforms": ["myspace"]}},                      # unknown platform
        {**DRAFT, "cover_url": "not a url"},
        {**DRAFT, "source": {"url": "https://x.example.org"}},                 # source without name
        {**DRAFT, "status": "approved"},                                       # extra field
    ]
    for body in bad_bodies:
        assert_error(editor.post("/v1/drafts", json=body), 422, "validation_failed")
    assert_error(people.content("reviewer1").post("/v1/drafts", json=DRAFT), 403, "role_required")
    assert_error(client(stack, "content").post("/v1/drafts", json=DRAFT), 401, "unauthenticated")
    assert len(editor.get("/v1/drafts").json()["items"]) == before

    item_id = editor.post("/v1/drafts", json=DRAFT).json()["id"]
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    review = open_review(people, item_id, 1)
    rid = review["id"]

    # -- wrong actors and bad decisions on level 1
    assert_error(decide(people, "editor", rid, decision="approve", checks=ALL_CHECKS), 403, "author_cannot_review")
    assert_error(decide(people, "reviewer2", rid, decision="approve", checks=ALL_CHECKS), 403, "not_level_holder")
    assert_error(decide(people, "reviewer3", rid, decision="reject", comment="不行"), 403, "not_level_holder")
    assert_error(decide(people, "ops", rid, decision="approve", checks=ALL_CHECKS), 403, "not_level_holder")
    assert_error(decide(people, "reviewer1", rid, decision="approve"), 422, "checks_incomplete")
    body = assert_error(decide(people, "reviewer1", rid, decision="approve", checks={**ALL_CHECKS, "law": False}),
                        422, "checks_incomplete")
    assert body["error"]["details"]["failed"] == ["law"]
    assert_error(decide(people, "reviewer1", rid, decision="reject"), 422, "comment_required")
    assert_error(decide(people, "reviewer1", rid, decision="reject", comment="   "), 422, "comment_required")
    assert_error(decide(people, "reviewer1", rid, decision="maybe", checks=ALL_CHECKS), 422, "validation_failed")
    assert_error(decide(people, "reviewer1", rid, decision="approve", checks={**ALL_CHECKS, "policy": "yes"}),
                 422, "validation_failed")
    assert_error(decide(people, "reviewer1", rid, decision="approve", checks=ALL_CHECKS, level=2), 422,
                 "validation_failed")
    assert_error(decide(people, "reviewer1", "no-such-review", decision="reject", comment="x"), 404,
                 "review_not_found")
    unchanged = people.review("reviewer1").get(f"/v1/reviews/{rid}").json()
    assert unchanged["state"] == "in_review" and unchanged["current_level"] == 1
    assert all(lv["decision"] is None for lv in unchanged["levels"])

    # -- another unit's people see and decide nothing here
    unit_id = editor.get(f"/v1/drafts/{item_id}").json()["unit_id"]
    province = ops_account.get("/v1/regions").json()["items"][0]
    city = ops_account.post("/v1/regions", json={"name": "示范市", "parent_id": province["id"], "level": "city"}).json()
    other_unit = ops_account.post("/v1/units", json={"name": "示范市政府办", "region_id": city["id"]}).json()
    for username, roles, unit in (("other-editor", ["editor"], other_unit["id"]),
                                  ("other-r1", ["section_head"], other_unit["id"]),
                                  ("dual-r12", ["section_head", "deputy"], unit_id)):
        made = ops_account.post("/v1/users", json={"username": username, "password": "other-pass-2026",
                                                   "unit_id": unit, "roles": roles})
        assert made.status_code == 201, made.text
        people.token(username, "other-pass-2026")
    outsider = people.content("other-editor")
    assert_error(outsider.get(f"/v1/drafts/{item_id}"), 403, "other_unit")
    assert_error(outsider.get(f"/v1/drafts/{item_id}/revisions"), 403, "other_unit")
    assert_error(outsider.put(f"/v1/drafts/{item_id}", json=DRAFT, headers={"If-Match": "1"}), 403, "other_unit")
    assert_error(outsider.post(f"/v1/items/{item_id}/retract", json={"reason": "x"}), 403, "role_required")
    assert item_id not in [d["id"] for d in outsider.get("/v1/drafts").json()["items"]]
    assert_error(people.review("other-r1").get(f"/v1/reviews/{rid}"), 403, "other_unit")
    assert people.review("other-r1").get("/v1/reviews").json()["items"] == []
    assert_error(decide(people, "other-r1", rid, decision="approve", checks=ALL_CHECKS), 403, "not_level_holder")

    # -- rejection returns the draft to its author, comment kept
    rejected = decide(people, "reviewer1", rid, decision="reject", comment="数据口径需核实")
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected", rejected.text
    assert_error(decide(people, "reviewer1", rid, decision="reject", comment="再退"), 409, "review_closed")
    back = draft_status(people, item_id, "rejected")
    assert (back["review_comment"], back["rejected_level"], back["version"]) == ("数据口径需核实", 1, 1)

    # -- If-Match: missing, stale, malformed; none of them changes anything
    fixed = {**DRAFT, "body": DRAFT["body"] + "（数据已核实）"}
    assert_error(editor.put(f"/v1/drafts/{item_id}", json=fixed), 428, "if_match_required")
    assert_error(editor.put(f"/v1/drafts/{item_id}", json=fixed, headers={"If-Match": '"7"'}), 409, "version_conflict")
    assert_error(editor.put(f"/v1/drafts/{item_id}", json=fixed, headers={"If-Match": "v-one"}), 400, "invalid_if_match")
    assert_error(editor.put(f"/v1/drafts/{item_id}", json={**fixed, "body": 5}, headers={"If-Match": "1"}), 422,
                 "validation_failed")
    assert editor.get(f"/v1/drafts/{item_id}").json()["version"] == 1
    assert len(editor.get(f"/v1/drafts/{item_id}/revisions").json()["items"]) == 1

    # -- edited (still rejected, comment still shown) and resubmitted: a new round from level 1
    edited = editor.put(f"/v1/drafts/{item_id}", json=fixed, headers={"If-Match": "1"}).json()
    assert (edited["version"], edited["status"], edited["review_comment"]) == (2, "rejected", "数据口径需核实")
    resubmitted = editor.post(f"/v1/drafts/{item_id}/submit").json()
    assert resubmitted["status"] == "in_review" and resubmitted["review_comment"] is None
    second = open_review(people, item_id, 2)
    assert second["id"] != rid and second["current_level"] == 1 and second["item"]["body"] == fixed["body"]
    rounds = people.review("reviewer1").get("/v1/reviews", params={"item_id": item_id}).json()["items"]
    assert [(r["id"], r["state"]) for r in rounds] == [(rid, "rejected"), (second["id"], "in_review")]

    # -- nobody decides two levels of one item; a non-author editor is no reviewer
    assert decide(people, "dual-r12", second["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    assert_error(decide(people, "dual-r12", second["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "already_decided_other_level")
    ops_item = people.content("ops").post("/v1/drafts", json=DRAFT).json()["id"]
    assert people.content("ops").post(f"/v1/drafts/{ops_item}/submit").status_code == 200
    ops_review = open_review(people, ops_item, 1)
    assert_error(decide(people, "editor", ops_review["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "not_level_holder")

    # -- a newer submission of the same item supersedes the open round (published as content would)
    async def resubmit_directly():
        item = ev.ItemSnapshot(item_id=item_id, version=3, unit_id=unit_id, author_id=back["author_id"],
                               title="直接送审", body="正文", targets=ev.Targets(all=True))
        headers = envelope_headers(f"test-{time.time_ns()}", "govmedia.content.draft.submitted", "/govmedia/content",
                                   item_id, utcnow())
        nc = await nats.connect(stack.nats_url)
        try:
            await nc.jetstream().publish("govmedia.content.draft.submitted",
                                         ev.DraftSubmitted(item=item).SerializeToString(), headers=headers)
        finally:
            await nc.close()
    asyncio.run(resubmit_directly())
    third = open_review(people, item_id, 3)
    states = {r["id"]: r["state"] for r in
              people.review("ops").get("/v1/reviews", params={"item_id": item_id}).json()["items"]}
    assert states == {rid: "rejected", second["id"]: "superseded", third["id"]: "in_review"}


async def _poll(fetch, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await fetch()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met over gRPC")


def _code(err: grpc.aio.AioRpcError) -> tuple:
    return err.value.code(), dict(err.value.trailing_metadata() or ()).get("error-code")


async def test_grpc_create_submit_decide(stack):
    people = People(stack)
    md = {name: (("authorization", f"Bearer {people.token(name)}"),)
          for name in ("editor", "reviewer1", "reviewer2", "reviewer3")}
    fields = cpb.DraftFields(title="全省防汛工作部署", body="各地要……", targets=ev.Targets(platforms=["app", "weibo"]))
    async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as cch, \
            grpc.aio.insecure_channel(stack.services["review"].grpc_target) as rch:
        content, reviews = cpb_grpc.ContentServiceStub(cch), rpb_grpc.ReviewServiceStub(rch)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await content.CreateDraft(cpb.CreateDraftRequest(fields=cpb.DraftFields(title="无目标", body="x")),
                                      metadata=md["editor"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "validation_failed")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await content.CreateDraft(cpb.CreateDraftRequest(fields=fields))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

        draft = await content.CreateDraft(cpb.CreateDraftRequest(fields=fields), metadata=md["editor"])
        assert (draft.version, draft.status, list(draft.fields.targets.platforms)) == (1, "draft", ["app", "weibo"])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await content.UpdateDraft(cpb.UpdateDraftRequest(id=draft.id, fields=fields), metadata=md["editor"])
        assert _code(err) == (grpc.StatusCode.FAILED_PRECONDITION, "if_match_required")
        fields.subtitle = "省防汛抗旱指挥部"
        draft = await content.UpdateDraft(cpb.UpdateDraftRequest(id=draft.id, if_match=1, fields=fields),
                                          metadata=md["editor"])
        assert draft.version == 2 and draft.fields.subtitle == "省防汛抗旱指挥部"
        revisions = await content.ListRevisions(cpb.GetDraftRequest(id=draft.id), metadata=md["editor"])
        assert [r.version for r in revisions.items] == [1, 2] and list(revisions.items[1].changed) == ["subtitle"]
        assert (await content.SubmitDraft(cpb.SubmitDraftRequest(id=draft.id), metadata=md["editor"])).status == "in_review"

        async def open_one():
            found = await reviews.ListReviews(rpb.ListReviewsRequest(item_id=draft.id, mine=True), metadata=md["reviewer1"])
            return found.items[0] if found.items else None
        review = await _poll(open_one)
        assert (review.item.title, review.item.version, review.current_level) == ("全省防汛工作部署", 2, 1)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.Decide(rpb.DecideRequest(review_id=review.id, decision="approve"), metadata=md["reviewer1"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "checks_incomplete")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.Decide(rpb.DecideRequest(review_id=review.id, decision="approve",
                                                   checks=rpb.Checks(policy=True, wording=True, secrecy=True, law=True)),
                                 metadata=md["editor"])
        assert _code(err) == (grpc.StatusCode.PERMISSION_DENIED, "author_cannot_review")
        for reviewer in ("reviewer1", "reviewer2", "reviewer3"):
            review = await reviews.Decide(rpb.DecideRequest(
                review_id=review.id, decision="approve", comment="同意",
                checks=rpb.Checks(policy=True, wording=True, secrecy=True, law=True)), metadata=md[reviewer])
        assert review.state == "approved" and [lv.decision for lv in review.levels] == ["approve"] * 3
        assert (await reviews.GetReview(rpb.GetReviewRequest(id=review.id), metadata=md["reviewer1"])).state == "approved"

        async def approved():
            got = await content.GetDraft(cpb.GetDraftRequest(id=draft.id), metadata=md["editor"])
            return got.status == "approved" and got
        await _poll(approved)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await content.RetractItem(cpb.RetractItemRequest(id=draft.id), metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "validation_failed")
        gone = await content.RetractItem(cpb.RetractItemRequest(id=draft.id, reason="口径调整"), metadata=md["reviewer3"])
        assert (gone.status, gone.retract_reason) == ("retracted", "口径调整")
        listed = await content.ListDrafts(cpb.ListDraftsRequest(status="retracted"), metadata=md["editor"])
        assert [d.id for d in listed.items] == [draft.id]


def test_urgent_embargoed_drafts_carry_it_to_review_and_dispatch(stack):
    """`urgent`, `publish_at` and targets by kind of unit are the author's fields: stored,
    revised, and carried in the submitted snapshot (review runs deadlines from `urgent`,
    dispatch holds deliveries until `publish_at`)."""
    people = People(stack)
    editor = people.content("editor")
    body = {**DRAFT, "urgent": True, "publish_at": "2026-12-01T09:00:00+08:00",
            "targets": {"unit_kinds": ["government"], "platforms": ["weibo"]}}
    created = editor.post("/v1/drafts", json=body)
    assert created.status_code == 201, created.text
    draft = created.json()
    assert draft["urgent"] and draft["publish_at"] == "2026-12-01T01:00:00Z"
    assert draft["targets"] == {"platforms": ["weibo"], "unit_kinds": ["government"]}
    for bad in ({**body, "publish_at": "2026-12-01T09:00:00"},  # no offset: which 9 o'clock?
                {**body, "targets": {"unit_kinds": ["company"]}}):
        assert_error(editor.post("/v1/drafts", json=bad), 422, "validation_failed")
    later = editor.put(f"/v1/drafts/{draft['id']}", json={**body, "urgent": False}, headers={"If-Match": "1"}).json()
    assert later["version"] == 2 and not later["urgent"]
    assert editor.put(f"/v1/drafts/{draft['id']}", json=body, headers={"If-Match": "2"}).status_code == 200
    assert editor.post(f"/v1/drafts/{draft['id']}/submit").status_code == 200

    async def submitted() -> ev.ItemSnapshot:
        nc = await nats.connect(stack.nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe("govmedia.content.draft.submitted", durable=None,
                                                      stream="GOVMEDIA_CONTENT")
            for msg in await sub.fetch(10, timeout=5):
                item = ev.DraftSubmitted.FromString(msg.data).item
                if item.item_id == draft["id"]:
                    return item
        finally:
            await nc.close()

    item = asyncio.run(submitted())
    assert item.urgent and item.publish_at == "2026-12-01T01:00:00Z" and item.version == 3
    assert list(item.targets.unit_kinds) == ["government"] and list(item.targets.platforms) == ["weibo"]

"""The review service's rules with account, content and review as real processes (SQLite, and
PostgreSQL when reachable): a configurable chain per unit that never alters a review in
flight, urgent items reminded then escalated once each, delegation inside its window only,
the hash-chained audit trail (verified, then broken behind the service's back), and the
same use cases over gRPC.

One stack per backend serves the whole module (starting one is most of a test's time); every
test restores the unit's default chain before it ends."""
from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timedelta, timezone

import asyncpg
import grpc
import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from govmedia.events.v1 import events_pb2 as ev
from govmedia.review.v1 import review_pb2 as rpb
from govmedia.review.v1 import review_pb2_grpc as rpb_grpc
from govmedia_kit.audit import append_only_ddl, drop_append_only_ddl
from govmedia_kit.db import new_id, utcnow
from govmedia_kit.events import envelope_headers
from tests.conftest import BACKENDS, drop_pg_databases, make_stack
from tests.helpers import assert_error, db_dialect, eventually, service_db
from tests.test_content_review import ALL_CHECKS, DRAFT, People, decide, draft_status, open_review

SERVICES = ("account", "content", "review")
FAST = {"REVIEW_OVERDUE_CHECK_INTERVAL_S": "0.2", "REVIEW_LEXICON_POLL_S": "0.5"}
DEFAULT_CHAIN = [{"roles": ["section_head"]}, {"roles": ["deputy"]}, {"roles": ["principal", "chief_editor"]}]
OVERDUE = "govmedia.review.level.overdue"


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory):
    stack = make_stack(tmp_path_factory.mktemp(f"review-rules-{request.param}"), request.param, SERVICES)
    stack.extra_env.update(FAST)
    try:
        stack.start(only=SERVICES)
        yield stack
    finally:
        stack.stop()
        drop_pg_databases(stack._pg_urls)


# --- helpers (also used by test_review_machine.py) -------------------------------------------

def user_ids(people: People) -> dict[str, str]:
    items = people.account("ops").get("/v1/users", params={"limit": 200}).json()["items"]
    return {u["username"]: u["id"] for u in items}


def demo_unit(people: People) -> str:
    return people.content("editor").post("/v1/drafts", json=DRAFT).json()["unit_id"]


def make_user(people: People, username: str, roles: list[str], unit_id: str, password: str = "rules-pass-2026") -> str:
    made = people.account("ops").post("/v1/users", json={"username": username, "password": password,
                                                         "unit_id": unit_id, "roles": roles})
    assert made.status_code == 201, made.text
    people.token(username, password)
    return made.json()["id"]


def put_chain(people: People, who: str, unit_id: str, levels: list[dict], **headers):
    return people.review(who).put(f"/v1/review-chains/{unit_id}", json={"levels": levels},
                                  headers={k.replace("_", "-"): v for k, v in headers.items()})


def submit(people: People, draft: dict | None = None) -> tuple[str, dict]:
    """A new draft submitted by `editor`; answers its id and its open review."""
    editor = people.content("editor")
    item_id = editor.post("/v1/drafts", json=draft or DRAFT).json()["id"]
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    return item_id, open_review(people, item_id, 1)


async def publish_submission(stack, item: ev.ItemSnapshot) -> None:
    """A submission as the content service publishes it (for fields its API may not offer yet)."""
    headers = envelope_headers(new_id(), "govmedia.content.draft.submitted", "/govmedia/content", item.item_id,
                               utcnow())
    nc = await nats.connect(stack.nats_url)
    try:
        await nc.jetstream().publish("govmedia.content.draft.submitted",
                                     ev.DraftSubmitted(item=item).SerializeToString(), headers=headers)
    finally:
        await nc.close()


async def publish_user(stack, user: ev.UserUpserted) -> None:
    headers = envelope_headers(new_id(), "govmedia.account.user.upserted", "/govmedia/account", user.user_id,
                               utcnow())
    nc = await nats.connect(stack.nats_url)
    try:
        await nc.jetstream().publish("govmedia.account.user.upserted", user.SerializeToString(), headers=headers)
    finally:
        await nc.close()


async def overdue_events(stack, review_id: str) -> list[ev.ReviewLevelOverdue]:
    """Every govmedia.review.level.overdue event about `review_id` so far, in order."""
    nc = await nats.connect(stack.nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(OVERDUE, durable=None, stream="GOVMEDIA_REVIEW")
        got = []
        while True:
            try:
                msgs = await sub.fetch(50, timeout=0.3)
            except (NatsTimeout, asyncio.TimeoutError):
                break
            for msg in msgs:
                payload = ev.ReviewLevelOverdue()
                payload.ParseFromString(msg.data)
                if payload.review_id == review_id:
                    got.append(payload)
        return got
    finally:
        await nc.close()


async def review_db(stack, *statements: str) -> list:
    """Run SQL against the review service's own database, behind its back."""
    return await service_db(stack, "review", *statements)


def dialect(stack) -> str:
    return db_dialect(stack, "review")


# --- 1. the chain per unit ------------------------------------------------------------------

def test_chain_per_unit_versioned_and_never_altering_a_review_in_flight(stack):
    people = People(stack)
    unit = demo_unit(people)
    ids = user_ids(people)
    path = f"/v1/review-chains/{unit}"
    default = people.review("editor").get(path)
    assert default.status_code == 200 and default.headers["etag"] == '"0"', default.text
    body = default.json()
    assert (body["version"], body["is_default"], body["changed_by"]) == (0, True, None)
    assert [(lv["roles"], lv["deadline_minutes"]) for lv in body["levels"]] == [
        (["section_head"], 30), (["deputy"], 30), (["principal", "chief_editor"], 30)]

    # -- refusals change nothing
    assert_error(put_chain(people, "editor", unit, DEFAULT_CHAIN), 403, "role_required")
    assert_error(put_chain(people, "reviewer1", unit, DEFAULT_CHAIN), 403, "role_required")
    for levels in ([], [{"roles": ["section_head"]}] * 5 + [{"roles": ["principal"]}], [{"roles": []}],
                   [{"roles": ["ops"]}], [{"roles": ["principal", "principal"]}],
                   [{"roles": ["principal"], "deadline_minutes": 0}],
                   [{"roles": ["principal"], "deadline_minutes": -5}],
                   [{"roles": ["principal"], "deadline_minutes": "soon"}],
                   [{"roles": ["principal"], "holder": "x"}]):
        assert_error(put_chain(people, "reviewer3", unit, levels), 422, "validation_failed")
    for levels in ([{"roles": ["section_head"]}, {"roles": ["deputy"]}, {"roles": ["deputy"]}],
                   [{"roles": ["section_head"]}, {"roles": ["deputy"]}, {"roles": ["deputy", "principal"]}]):
        body = assert_error(put_chain(people, "reviewer3", unit, levels), 422, "last_level_not_editor_in_chief")
        assert body["error"]["details"]["allowed"] == ["principal", "chief_editor"]
    # 三审: fewer than three levels is refused (tests/test_security_reach.py has the whole case)
    for levels in ([{"roles": ["section_head"]}, {"roles": ["chief_editor"]}], [{"roles": ["principal"]}]):
        body = assert_error(put_chain(people, "reviewer3", unit, levels), 422, "chain_too_short")
        assert body["error"]["details"] == {"levels": len(levels), "min_levels": 3}
    assert_error(put_chain(people, "reviewer3", unit, DEFAULT_CHAIN, if_match='"3"'), 409, "version_conflict")
    assert_error(put_chain(people, "reviewer3", unit, DEFAULT_CHAIN, if_match="three"), 400, "invalid_if_match")
    other_unit = people.account("ops").post("/v1/units", json={
        "name": "示范省发展改革委", "region_id": people.account("ops").get("/v1/regions").json()["items"][0]["id"]})
    assert other_unit.status_code == 201, other_unit.text
    make_user(people, "other-principal", ["principal"], other_unit.json()["id"])
    assert_error(put_chain(people, "other-principal", unit, DEFAULT_CHAIN), 403, "other_unit")
    assert_error(people.review("other-principal").get(path), 403, "other_unit")
    # ops reach the units of their region's subtree only
    province = people.account("ops").get("/v1/regions").json()["items"][0]["id"]
    city = people.account("ops").post("/v1/regions", json={"name": "流程市", "parent_id": province,
                                                            "level": "city"}).json()["id"]
    city_unit = people.account("ops").post("/v1/units", json={"name": "流程市政府办", "region_id": city}).json()["id"]
    make_user(people, "city-ops-chain", ["ops"], city_unit)
    assert_error(put_chain(people, "city-ops-chain", unit, DEFAULT_CHAIN), 403, "other_unit")
    city_chain = put_chain(people, "city-ops-chain", city_unit, DEFAULT_CHAIN)
    assert city_chain.status_code == 200 and city_chain.json()["unit_id"] == city_unit, city_chain.text
    assert people.review("ops").get(path).json()["version"] == 0

    try:
        # -- the unit's principal sets three levels (the editor-in-chief alone decides the third)
        three = put_chain(people, "reviewer3", unit, [{"roles": ["section_head"], "deadline_minutes": 45},
                                                      {"roles": ["deputy"]}, {"roles": ["chief_editor"]}],
                          if_match='"0"')
        assert three.status_code == 200 and three.headers["etag"] == '"1"', three.text
        assert (three.json()["version"], three.json()["changed_by"], three.json()["is_default"]) == (
            1, ids["reviewer3"], False)
        in_flight_item, in_flight = submit(people)
        assert in_flight["chain_version"] == 1
        assert [(lv["holder_role"], lv["deadline_minutes"]) for lv in in_flight["levels"]] == [
            ("section_head", 45), ("deputy", 30), ("chief_editor", 30)]

        # -- ops changes it again (four levels) while that review is in flight
        four = put_chain(people, "ops", unit, [{"roles": ["section_head"]}, {"roles": ["deputy"]},
                                               {"roles": ["editor"]}, {"roles": ["principal", "chief_editor"]}])
        assert four.status_code == 200 and four.json()["version"] == 2, four.text
        still = people.review("reviewer1").get(f"/v1/reviews/{in_flight['id']}").json()
        assert [lv["holder_role"] for lv in still["levels"]] == ["section_head", "deputy", "chief_editor"]
        assert decide(people, "reviewer1", in_flight["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
        assert_error(decide(people, "reviewer3", in_flight["id"], decision="approve", checks=ALL_CHECKS), 403,
                     "not_level_holder")
        assert decide(people, "reviewer2", in_flight["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
        done = decide(people, "reviewer3", in_flight["id"], decision="approve", checks=ALL_CHECKS)
        assert done.status_code == 200 and done.json()["state"] == "approved", done.text
        assert draft_status(people, in_flight_item, "approved")

        # -- the next submission follows the new chain
        _, fresh = submit(people)
        assert fresh["chain_version"] == 2 and [lv["holder_role"] for lv in fresh["levels"]] == [
            "section_head", "deputy", "editor", "principal|chief_editor"]
        history = people.review("reviewer1").get(f"{path}/versions").json()["items"]
        assert [(c["version"], c["changed_by"]) for c in history] == [(2, ids["ops"]), (1, ids["reviewer3"])]
        page = people.review("reviewer1").get(f"{path}/versions", params={"limit": 1}).json()
        assert len(page["items"]) == 1 and page["next_cursor"] == "2"
    finally:
        assert put_chain(people, "ops", unit, DEFAULT_CHAIN).status_code == 200


# --- 3. urgent items ------------------------------------------------------------------------

def test_urgent_levels_are_reminded_then_escalated_once_each(stack):
    people = People(stack)
    unit = demo_unit(people)
    ids = user_ids(people)
    # levels 1 and 3 fall due in 1.2 s; level 2 has an hour, so it cannot fall due while the test decides it
    quick = [{**lv, "deadline_minutes": 60 if i == 1 else 0.02} for i, lv in enumerate(DEFAULT_CHAIN)]
    assert put_chain(people, "ops", unit, quick).status_code == 200
    try:
        item = ev.ItemSnapshot(item_id=new_id(), version=1, unit_id=unit, author_id=ids["editor"],
                               title="突发：某地发生山体滑坡，请各单位做好应急处置", body="各有关单位：……",
                               targets=ev.Targets(all=True), urgent=True)
        asyncio.run(publish_submission(stack, item))
        review = open_review(people, item.item_id, 1)
        assert review["urgent"] and review["item"]["urgent"]
        assert review["levels"][0]["due_at"] and review["levels"][1]["due_at"] is None
        # an ordinary item has no deadline
        _, calm = submit(people)
        assert not calm["urgent"] and all(lv["due_at"] is None for lv in calm["levels"])

        def stages(want: int):
            got = asyncio.run(overdue_events(stack, review["id"]))
            return got if len(got) >= want else None
        first = eventually(lambda: stages(2), timeout=15)
        assert [(e.stage, e.level) for e in first] == [("reminder", 1), ("escalated", 1)]
        assert list(first[0].holder_roles) == ["section_head"] and list(first[1].next_roles) == ["deputy"]
        assert first[0].unit_id == unit and first[0].item_id == item.item_id and first[0].due_at
        overdue = people.review("ops").get("/v1/reviews", params={"overdue": "true"}).json()["items"]
        assert review["id"] in [r["id"] for r in overdue] and all(r["urgent"] for r in overdue)
        assert calm["id"] not in [r["id"] for r in overdue]
        time.sleep(0.8)  # several more rounds of the worker: nothing is announced twice
        assert len(asyncio.run(overdue_events(stack, review["id"]))) == 2
        level1 = people.review("reviewer1").get(f"/v1/reviews/{review['id']}").json()["levels"][0]
        assert level1["reminded_at"] and level1["escalated_at"]

        # levels 1 and 2 decided: the last level runs against its own deadline, escalating to the principal
        for reviewer in ("reviewer1", "reviewer2"):
            assert decide(people, reviewer, review["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
        last = eventually(lambda: stages(4), timeout=15)[2:]
        assert [(e.stage, e.level) for e in last] == [("reminder", 3), ("escalated", 3)]
        assert list(last[0].holder_roles) == ["principal", "chief_editor"] and list(last[1].next_roles) == ["principal"]
        audit = people.review("ops").get(f"/v1/reviews/{review['id']}/audit").json()["items"]
        assert [e["action"] for e in audit if e["action"].startswith("level_overdue")] == [
            "level_overdue_reminder", "level_overdue_escalated"] * 2
        assert people.review("ops").get(f"/v1/reviews/{review['id']}/audit/verify").json()["ok"]
    finally:
        assert put_chain(people, "ops", unit, DEFAULT_CHAIN).status_code == 200


# --- 4. delegation --------------------------------------------------------------------------

def test_delegation_inside_its_window_only_with_separation_of_duties(stack):
    people = People(stack)
    unit = demo_unit(people)
    ids = user_ids(people)
    stand_in = make_user(people, "deputy-stand-in", ["editor"], unit)
    section_stand_in = make_user(people, "section-and-stand-in", ["section_head"], unit)
    later_stand_in = make_user(people, "later-stand-in", ["editor"], unit)
    outsider_unit = people.account("ops").post("/v1/units", json={
        "name": "示范省民政厅", "region_id": people.account("ops").get("/v1/regions").json()["items"][0]["id"]}).json()
    outsider = make_user(people, "outside-deputy", ["deputy"], outsider_unit["id"])
    now = datetime.now(timezone.utc)
    window = {"starts_at": (now - timedelta(minutes=1)).isoformat(), "ends_at": (now + timedelta(hours=2)).isoformat()}

    def delegate(who: str, **body):
        return people.review(who).post("/v1/delegations", json={"role": "deputy", "reason": "出差期间代为审核",
                                                                **window, **body})

    # the users read model learns of new people by event: wait until the delegate is known
    granted = eventually(lambda: (r := delegate("reviewer2", to_user_id=stand_in)).status_code == 201 and r)
    grant = granted.json()
    assert (grant["from_user_id"], grant["to_user_id"], grant["role"], grant["active"]) == (
        ids["reviewer2"], stand_in, "deputy", True)
    eventually(lambda: delegate("reviewer2", to_user_id=section_stand_in).status_code == 201)

    # -- refusals
    eventually(lambda: delegate("reviewer2", to_user_id=outsider).status_code == 422)  # once the outsider is known
    assert_error(delegate("reviewer2", to_user_id=outsider), 422, "delegate_not_in_unit")
    assert_error(delegate("reviewer2", to_user_id="no-such-user"), 422, "delegate_not_in_unit")
    assert_error(delegate("reviewer2", to_user_id=ids["reviewer2"]), 422, "delegate_is_delegator")
    gone = new_id()  # a colleague of the unit who has left (announced inactive by the account service)
    asyncio.run(publish_user(stack, ev.UserUpserted(user_id=gone, username="left-the-unit", unit_id=unit,
                                                    roles=["deputy"], active=False)))
    eventually(lambda: asyncio.run(review_db(stack, f"SELECT active FROM users WHERE user_id = '{gone}'")))
    assert_error(delegate("reviewer2", to_user_id=gone), 422, "delegate_not_in_unit")
    assert_error(delegate("reviewer2", to_user_id=stand_in, role="section_head"), 403, "role_not_held")
    assert_error(delegate("reviewer2", to_user_id=stand_in, role="ops"), 422, "validation_failed")
    assert_error(delegate("reviewer2", to_user_id=stand_in, starts_at=window["ends_at"], ends_at=window["starts_at"]),
                 422, "invalid_window")
    assert_error(delegate("reviewer2", to_user_id=stand_in, starts_at=(now - timedelta(days=2)).isoformat(),
                          ends_at=(now - timedelta(days=1)).isoformat()), 422, "invalid_window")
    assert_error(delegate("reviewer2", to_user_id=stand_in, ends_at=(now + timedelta(days=200)).isoformat()),
                 422, "window_too_long")
    assert_error(delegate("reviewer2", to_user_id=stand_in, starts_at="2026-03-02T08:00:00"), 422,
                 "validation_failed")  # no offset
    assert_error(delegate("editor", to_user_id=stand_in, from_user_id=ids["reviewer2"]), 403, "role_required")
    assert_error(delegate("reviewer1", to_user_id=stand_in), 403, "role_not_held")
    listed = people.review("reviewer1").get("/v1/delegations").json()["items"]
    assert [(d["to_user_id"], d["active"]) for d in listed] == [(stand_in, True), (section_stand_in, True)]

    # -- the unit's principal delegates on the absent deputy's behalf, for a later window
    future = delegate("reviewer3", to_user_id=later_stand_in, from_user_id=ids["reviewer2"],
                      starts_at=(now + timedelta(hours=3)).isoformat(), ends_at=(now + timedelta(hours=5)).isoformat())
    assert future.status_code == 201, future.text
    assert (future.json()["from_user_id"], future.json()["created_by"], future.json()["active"]) == (
        ids["reviewer2"], ids["reviewer3"], False)
    assert [d["id"] for d in people.review("reviewer2").get("/v1/delegations", params={"active": "false"})
            .json()["items"]] == [future.json()["id"]]

    # -- inside the window the stand-in decides level 2 for the deputy; the decision says so
    item_id, review = submit(people)
    assert decide(people, "reviewer1", review["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    mine = people.review("deputy-stand-in").get("/v1/reviews", params={"mine": "true"}).json()["items"]
    assert review["id"] in [r["id"] for r in mine]
    assert_error(decide(people, "later-stand-in", review["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "not_level_holder")  # outside its window
    assert_error(decide(people, "outside-deputy", review["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "not_level_holder")
    by_proxy = decide(people, "deputy-stand-in", review["id"], decision="approve", checks=ALL_CHECKS, comment="代审同意")
    assert by_proxy.status_code == 200, by_proxy.text
    level2 = by_proxy.json()["levels"][1]
    assert (level2["decided_by"], level2["delegated_from"], level2["delegation_id"]) == (
        stand_in, ids["reviewer2"], grant["id"])
    assert decide(people, "reviewer3", review["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    assert draft_status(people, item_id, "approved")
    actions = [e["action"] for e in people.review("ops").get(f"/v1/reviews/{review['id']}/audit").json()["items"]]
    assert actions == ["opened", "decided", "delegation_used", "decided", "decided", "approval_emitted"]

    # -- separation of duties: who decided level 1 may not decide level 2 by delegation
    _, second = submit(people)
    assert decide(people, "section-and-stand-in", second["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    assert_error(decide(people, "section-and-stand-in", second["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "already_decided_other_level")

    # -- revoked: the stand-in is refused at once; revoking twice is a conflict
    assert_error(people.review("deputy-stand-in").delete(f"/v1/delegations/{grant['id']}"), 403, "not_delegator")
    revoked = people.review("reviewer2").delete(f"/v1/delegations/{grant['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_by"] == ids["reviewer2"], revoked.text
    assert not revoked.json()["active"]
    assert_error(people.review("reviewer3").delete(f"/v1/delegations/{grant['id']}"), 409, "delegation_revoked")
    assert_error(people.review("reviewer2").delete("/v1/delegations/nope"), 404, "delegation_not_found")
    assert_error(decide(people, "deputy-stand-in", second["id"], decision="approve", checks=ALL_CHECKS), 403,
                 "not_level_holder")
    assert decide(people, "reviewer2", second["id"], decision="approve", checks=ALL_CHECKS).status_code == 200


# --- 5. the audit trail ---------------------------------------------------------------------

def test_a_rejection_returns_the_draft_with_every_comment_of_its_round(stack):
    """Level 1 approves with a remark, level 2 rejects: the draft goes back to its author with
    every decision and comment of the round (and the review shows them too); the resubmission
    starts again at level 1 with nobody's earlier decision carried over, and the draft's list
    of the old round's decisions is cleared."""
    people = People(stack)
    item_id, review = submit(people)
    assert decide(people, "reviewer1", review["id"], decision="approve", checks=ALL_CHECKS,
                  comment="数据已核实，建议精简第二段").status_code == 200
    assert decide(people, "reviewer2", review["id"], decision="reject", comment="标题表述不妥").status_code == 200
    back = draft_status(people, item_id, "rejected")
    assert (back["review_comment"], back["rejected_level"]) == ("标题表述不妥", 2)
    ids = user_ids(people)
    assert [(d["level"], d["decision"], d["comment"], d["reviewer_id"]) for d in back["review_decisions"]] == [
        (1, "approve", "数据已核实，建议精简第二段", ids["reviewer1"]), (2, "reject", "标题表述不妥", ids["reviewer2"])]
    assert all(d["decided_at"].endswith("Z") for d in back["review_decisions"])
    # the author reads the round: each level's decision, comment and gates
    rounds = people.review("editor").get("/v1/reviews", params={"item_id": item_id}).json()["items"]
    assert [r["id"] for r in rounds] == [review["id"]] and rounds[0]["state"] == "rejected"
    levels = people.review("editor").get(f"/v1/reviews/{review['id']}").json()["levels"]
    assert [(lv["level"], lv["decision"], lv["comment"]) for lv in levels] == [
        (1, "approve", "数据已核实，建议精简第二段"), (2, "reject", "标题表述不妥"), (3, None, None)]
    assert levels[0]["checks"] == ALL_CHECKS
    editor = people.content("editor")
    fixed = {**DRAFT, "title": DRAFT["title"] + "（修订）"}
    assert editor.put(f"/v1/drafts/{item_id}", json=fixed, headers={"If-Match": "1"}).status_code == 200
    assert editor.post(f"/v1/drafts/{item_id}/submit").status_code == 200
    again = open_review(people, item_id, 2)
    assert again["current_level"] == 1 and all(lv["decision"] is None for lv in again["levels"])
    assert editor.get(f"/v1/drafts/{item_id}").json()["review_decisions"] == []
    # reviewer1 decided level 1 of the earlier round, not of this one: they may decide it again
    assert decide(people, "reviewer1", again["id"], decision="approve", checks=ALL_CHECKS).status_code == 200


def test_audit_trail_verifies_and_shows_where_it_was_tampered_with(stack):
    people = People(stack)
    ids = user_ids(people)
    item_id, first_round = submit(people)
    assert decide(people, "reviewer1", first_round["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    # a newer version submitted (as content publishes it) supersedes the round in flight
    snapshot = ev.ItemSnapshot(item_id=item_id, version=2, unit_id=first_round["unit_id"], author_id=ids["editor"],
                               title="关于做好春节期间安全生产工作的通知（修订）", body="各市、县人民政府：……",
                               targets=ev.Targets(all=True))
    asyncio.run(publish_submission(stack, snapshot))
    review = open_review(people, item_id, 2)
    assert decide(people, "reviewer1", review["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    assert decide(people, "reviewer2", review["id"], decision="reject", comment="表述需斟酌").status_code == 200
    audit = people.review("reviewer1").get(f"/v1/reviews/{review['id']}/audit")
    assert audit.status_code == 200, audit.text
    entries = audit.json()["items"]
    assert audit.json()["stream_id"] == item_id  # one stream per item: every round of its review
    assert [(e["seq"], e["action"]) for e in entries] == [
        (1, "opened"), (2, "decided"), (3, "superseded"), (4, "opened"), (5, "decided"), (6, "decided"),
        (7, "rejection_emitted")]
    assert entries[0]["after"]["review_id"] == first_round["id"] and entries[0]["after"]["lexicon_version"] >= 1
    assert entries[2]["before"] == {"review_id": first_round["id"], "state": "in_review"}
    assert entries[2]["after"]["state"] == "superseded" and entries[3]["after"]["review_id"] == review["id"]
    assert (entries[5]["actor"], entries[5]["after"]["decision"], entries[5]["after"]["comment"]) == (
        ids["reviewer2"], "reject", "表述需斟酌")
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(entries, entries[1:]))
    first = people.review("reviewer1").get(f"/v1/reviews/{review['id']}/audit", params={"limit": 4}).json()
    assert [e["seq"] for e in first["items"]] == [1, 2, 3, 4] and first["next_cursor"] == "4"
    rest = people.review("reviewer1").get(f"/v1/reviews/{review['id']}/audit",
                                          params={"limit": 4, "cursor": first["next_cursor"]}).json()
    assert [e["seq"] for e in rest["items"]] == [5, 6, 7] and rest["next_cursor"] is None
    verify = lambda: people.review("ops").get(f"/v1/reviews/{review['id']}/audit/verify").json()  # noqa: E731
    assert verify() == {"stream_id": item_id, "ok": True, "entries": 7, "first_broken": None}
    assert_error(people.review("reviewer1").get("/v1/reviews/nope/audit/verify"), 404, "review_not_found")

    # the service's own database refuses to change history…
    where = f"stream_id = '{item_id}' AND seq = 2"
    with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError), match="append-only"):
        asyncio.run(review_db(stack, f"UPDATE audit_trail SET actor = 'someone' WHERE {where}"))
    with pytest.raises((sqlite3.DatabaseError, asyncpg.PostgresError), match="append-only"):
        asyncio.run(review_db(stack, f"DELETE FROM audit_trail WHERE {where}"))
    assert verify()["ok"]
    # …until someone drops the trigger and changes a decision: the first broken link is reported
    kind = dialect(stack)
    forged = """UPDATE audit_trail SET actor = 'someone-else' WHERE """ + where
    asyncio.run(review_db(stack, *drop_append_only_ddl("audit_trail", kind), forged,
                          *append_only_ddl("audit_trail", kind)))
    assert verify() == {"stream_id": item_id, "ok": False, "entries": 7,
                        "first_broken": {"seq": 2, "reason": "hash_mismatch"}}


# --- 6. gRPC --------------------------------------------------------------------------------

def _code(err) -> tuple:
    return err.value.code(), dict(err.value.trailing_metadata() or ()).get("error-code")


async def test_grpc_chain_and_audit(stack):
    people = People(stack)
    unit = await asyncio.to_thread(demo_unit, people)
    md = {name: (("authorization", f"Bearer {await asyncio.to_thread(people.token, name)}"),)
          for name in ("editor", "reviewer1", "reviewer3", "ops")}
    async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
        reviews = rpb_grpc.ReviewServiceStub(channel)
        chain = await reviews.GetChain(rpb.GetChainRequest(unit_id=unit), metadata=md["editor"])
        base = chain.version
        assert [list(lv.roles) for lv in chain.levels][-1] == ["principal", "chief_editor"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, levels=[
                rpb.ChainLevel(roles=["section_head"]), rpb.ChainLevel(roles=["deputy"]),
                rpb.ChainLevel(roles=["deputy"])]), metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "last_level_not_editor_in_chief")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, levels=[rpb.ChainLevel(roles=["principal"])]),
                                   metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "chain_too_short")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, levels=[rpb.ChainLevel(roles=["principal"])]),
                                   metadata=md["editor"])
        assert _code(err) == (grpc.StatusCode.PERMISSION_DENIED, "role_required")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, if_match=base + 5, levels=[
                rpb.ChainLevel(roles=lv["roles"]) for lv in DEFAULT_CHAIN]), metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.FAILED_PRECONDITION, "version_conflict")
        try:
            put = await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, if_match=base, levels=[
                rpb.ChainLevel(roles=["section_head"], deadline_minutes=10), rpb.ChainLevel(roles=["deputy"]),
                rpb.ChainLevel(roles=["principal"])]), metadata=md["reviewer3"])
            assert (put.version, put.is_default) == (base + 1, False)
            assert [(list(lv.roles), lv.deadline_minutes) for lv in put.levels] == [
                (["section_head"], 10), (["deputy"], 30), (["principal"], 30)]
            history = await reviews.ListChainVersions(rpb.ListChainVersionsRequest(unit_id=unit),
                                                      metadata=md["reviewer1"])
            assert history.items[0].version == base + 1
        finally:
            await reviews.PutChain(rpb.PutChainRequest(unit_id=unit, levels=[
                rpb.ChainLevel(roles=lv["roles"]) for lv in DEFAULT_CHAIN]), metadata=md["ops"])

        _, review = await asyncio.to_thread(submit, people)
        assert review["chain_version"] == base + 2 and len(review["levels"]) == 3
        await reviews.Decide(rpb.DecideRequest(review_id=review["id"], decision="reject", comment="请补充数据"),
                             metadata=md["reviewer1"])
        entries = await reviews.GetAudit(rpb.GetAuditRequest(review_id=review["id"]), metadata=md["reviewer1"])
        assert [e.action for e in entries.items] == ["opened", "decided", "rejection_emitted"]
        assert '"decision":' in entries.items[1].after_json and entries.next_cursor == 0
        verified = await reviews.VerifyAudit(rpb.GetReviewRequest(id=review["id"]), metadata=md["ops"])
        assert (verified.ok, verified.entries, verified.first_broken_seq) == (True, 3, 0)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.VerifyAudit(rpb.GetReviewRequest(id="nope"), metadata=md["ops"])
        assert _code(err) == (grpc.StatusCode.NOT_FOUND, "review_not_found")

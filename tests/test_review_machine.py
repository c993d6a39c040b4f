"""Machine review (机审) with account, content and review as real processes (SQLite, and
PostgreSQL when reachable): findings stored with every review before anyone sees it,
blocking findings stopping approval until the last level overrides them in writing, warnings
never stopping anything, and lexicons edited by province-level ops taking effect on the next
submission without a restart — also when another replica stored the new version."""
from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from govmedia.review.v1 import review_pb2 as rpb
from govmedia.review.v1 import review_pb2_grpc as rpb_grpc
from tests.conftest import BACKENDS, drop_pg_databases, make_stack
from tests.helpers import assert_error
from tests.test_content_review import ALL_CHECKS, DRAFT, People, decide, draft_status
from tests.test_review_rules import FAST, SERVICES, _code, make_user, review_db, submit, user_ids

SECRET = "内部资料，注意保密"  # a secrecy marker: blocking
MOOD = "烦死了"  # emotional opinion: a warning


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, tmp_path_factory):
    stack = make_stack(tmp_path_factory.mktemp(f"review-machine-{request.param}"), request.param, SERVICES)
    stack.extra_env.update(FAST)
    try:
        stack.start(only=SERVICES)
        yield stack
    finally:
        stack.stop()
        drop_pg_databases(stack._pg_urls)


def draft(body: str, title: str = DRAFT["title"]) -> dict:
    return {**DRAFT, "title": title, "body": body}


def test_blocking_findings_stop_approval_until_the_last_level_overrides_them(stack):
    people = People(stack)
    ids = user_ids(people)

    # -- an ordinary draft raises nothing
    _, plain = submit(people)
    assert (plain["findings"], plain["blocking_open"]) == ([], 0) and plain["lexicon_version"] >= 1

    # -- a warning is shown and stops nothing
    warned_item, warned = submit(people, draft(f"近来加班太多，{MOOD}。"))
    assert [(f["severity"], f["field"], f["matched"]) for f in warned["findings"]] == [("warning", "body", MOOD)]
    assert warned["blocking_open"] == 0
    for reviewer in ("reviewer1", "reviewer2", "reviewer3"):
        assert decide(people, reviewer, warned["id"], decision="approve", checks=ALL_CHECKS).status_code == 200
    assert draft_status(people, warned_item, "approved")

    # -- a blocking finding: stored with the review, where it is, with the lexicon version
    body = f"现将材料印发给你们。{SECRET}。{MOOD}"
    item_id, review = submit(people, draft(body))
    blocking = [f for f in review["findings"] if f["severity"] == "blocking"]
    warning = [f for f in review["findings"] if f["severity"] == "warning"]
    assert len(blocking) == 1 and len(warning) == 1 and review["blocking_open"] == 1
    found = blocking[0]
    assert (found["category"], found["field"], found["matched"], found["overridden"]) == ("secrecy", "body", SECRET,
                                                                                         False)
    assert body[found["start"]:found["end"]] == SECRET
    rid = review["id"]

    # approval refused at any level while it stands; a rejection is always possible (not tried here)
    refused = assert_error(decide(people, "reviewer1", rid, decision="approve", checks=ALL_CHECKS), 409,
                           "blocking_findings")
    assert [f["id"] for f in refused["error"]["details"]["findings"]] == [found["id"]]
    assert_error(decide(people, "reviewer1", rid, decision="approve"), 422, "checks_incomplete")

    override = lambda who, fid, reason="系保密提示语的引用说明，并非涉密内容": people.review(who).post(  # noqa: E731
        f"/v1/reviews/{rid}/findings/{fid}/override", json={"reason": reason})
    assert_error(override("reviewer1", found["id"]), 403, "not_last_level_holder")
    assert_error(override("reviewer2", found["id"]), 403, "not_last_level_holder")
    assert_error(override("editor", found["id"]), 403, "author_cannot_review")
    assert_error(override("ops", found["id"]), 403, "not_last_level_holder")
    assert_error(override("reviewer3", found["id"], reason="  "), 422, "validation_failed")
    assert_error(people.review("reviewer3").post(f"/v1/reviews/{rid}/findings/{found['id']}/override", json={}),
                 422, "validation_failed")
    assert_error(override("reviewer3", warning[0]["id"]), 409, "finding_not_blocking")
    assert_error(override("reviewer3", "no-such-finding"), 404, "finding_not_found")
    unchanged = people.review("reviewer1").get(f"/v1/reviews/{rid}").json()
    assert unchanged["blocking_open"] == 1 and unchanged["levels"][0]["decision"] is None

    # the principal / editor-in-chief overrides it as a false positive, in writing
    done = override("reviewer3", found["id"])
    assert done.status_code == 200, done.text
    marked = next(f for f in done.json()["findings"] if f["id"] == found["id"])
    assert (marked["overridden"], marked["overridden_by"], marked["override_reason"]) == (
        True, ids["reviewer3"], "系保密提示语的引用说明，并非涉密内容")
    assert marked["overridden_at"] and done.json()["blocking_open"] == 0
    assert_error(override("reviewer3", found["id"]), 409, "finding_already_overridden")

    for reviewer in ("reviewer1", "reviewer2", "reviewer3"):
        answer = decide(people, reviewer, rid, decision="approve", checks=ALL_CHECKS)
        assert answer.status_code == 200, answer.text
    assert draft_status(people, item_id, "approved")
    assert_error(override("reviewer3", found["id"]), 409, "review_closed")
    audit = people.review("ops").get(f"/v1/reviews/{rid}/audit").json()["items"]
    assert [e["action"] for e in audit] == ["opened", "finding_overridden", "decided", "decided", "decided",
                                            "approval_emitted"]
    assert sorted(f["category"] for f in audit[0]["after"]["findings"]) == ["prohibited.emotional_opinion", "secrecy"]
    assert audit[1]["before"]["overridden"] is False and audit[1]["after"]["overridden"] is True

    # -- a blocking finding does not stop a rejection
    _, another = submit(people, draft(f"附件：{SECRET}"))
    assert another["blocking_open"] == 1
    rejected = decide(people, "reviewer1", another["id"], decision="reject", comment="请删去保密标注")
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"


def test_lexicons_are_edited_by_ops_and_reloaded_without_restart(stack):
    people = People(stack)
    ops = people.review("ops")
    word = "测试禁词甲"
    other_word = "测试禁词乙"

    current = ops.get("/v1/lexicons")
    assert current.status_code == 200, current.text
    base = current.json()
    assert current.headers["etag"] == f'"{base["version"]}"' and "prohibited.other" in base["data"]["categories"]
    assert word not in base["data"]["categories"]["prohibited.other"]["terms"]

    # -- who may read and edit: province-level ops only
    assert_error(people.review("reviewer3").get("/v1/lexicons"), 403, "role_required")
    assert_error(people.review("reviewer3").post("/v1/lexicons/terms", json={"category": "prohibited.other",
                                                                             "add": {word: None}}),
                 403, "role_required")
    province = people.account("ops").get("/v1/regions").json()["items"][0]["id"]
    city = people.account("ops").post("/v1/regions", json={"name": "词库市", "parent_id": province,
                                                            "level": "city"}).json()["id"]
    city_unit = people.account("ops").post("/v1/units", json={"name": "词库市政府办", "region_id": city}).json()["id"]
    make_user(people, "city-ops", ["ops"], city_unit)
    assert_error(people.review("city-ops").get("/v1/lexicons"), 403, "province_only")
    assert_error(people.review("city-ops").put("/v1/lexicons", json=base["data"],
                                               headers={"If-Match": str(base["version"])}), 403, "province_only")

    # -- bad edits are refused with the engine's message and store nothing
    assert_error(ops.put("/v1/lexicons", json=base["data"]), 428, "if_match_required")
    assert_error(ops.put("/v1/lexicons", json=base["data"], headers={"If-Match": "v1"}), 400, "invalid_if_match")
    assert_error(ops.put("/v1/lexicons", json=base["data"], headers={"If-Match": str(base["version"] + 7)}), 409,
                 "version_conflict")
    broken = json.loads(json.dumps(base["data"]))
    broken["categories"]["prohibited.other"]["severity"] = "fatal"
    refused = assert_error(ops.put("/v1/lexicons", json=broken, headers={"If-Match": str(base["version"])}), 422,
                           "invalid_lexicon")
    assert "fatal" in refused["error"]["details"]["problem"]
    assert_error(ops.put("/v1/lexicons", json=["not", "an", "object"], headers={"If-Match": str(base["version"])}),
                 422, "invalid_lexicon")
    assert_error(ops.put("/v1/lexicons", json={**base["data"], "extra": []}, headers={"If-Match": str(base["version"])}),
                 422, "invalid_lexicon")
    terms = lambda body, **h: ops.post("/v1/lexicons/terms", json=body, headers=h)  # noqa: E731
    assert_error(terms({"category": "prohibited.nothing", "add": {word: None}}), 422, "unknown_category")
    assert_error(terms({"category": "prohibited.other", "remove": [word]}), 422, "term_not_found")
    assert_error(terms({"category": "prohibited.other"}), 422, "nothing_to_change")
    assert_error(terms({"category": "prohibited.other", "add": {word: "fatal"}}), 422, "validation_failed")
    assert_error(terms({"category": "prohibited.other", "add": {"   ": None}}), 422, "validation_failed")
    assert_error(terms({"category": "prohibited.other", "add": {"！！！": None}}), 422, "invalid_lexicon")
    assert_error(terms({"category": "prohibited.other", "add": {word: None}}, **{"If-Match": "999"}), 409,
                 "version_conflict")
    assert [v["version"] for v in ops.get("/v1/lexicons/versions").json()["items"]] == [base["version"]]

    # -- before the edit the word passes; after it, the next submission is blocked, no restart
    _, before = submit(people, draft(f"本次活动{word}相关安排如下。"))
    assert before["findings"] == [] and before["lexicon_version"] == base["version"]
    added = terms({"category": "prohibited.other", "add": {word: None, other_word: "warning"}})
    assert added.status_code == 200, added.text
    v2 = added.json()["version"]
    assert v2 == base["version"] + 1 and added.json()["change"] == "prohibited.other: +2 -0"
    _, after = submit(people, draft(f"本次活动{word}相关安排如下，{other_word}。"))
    assert after["lexicon_version"] == v2
    assert {(f["rule"], f["severity"]) for f in after["findings"]} == {(word, "blocking"), (other_word, "warning")}

    # -- the whole data replaced (If-Match), the word taken out again
    data = ops.get("/v1/lexicons").json()["data"]
    del data["categories"]["prohibited.other"]["terms"][word]
    replaced = ops.put("/v1/lexicons", json=data, headers={"If-Match": f'"{v2}"'}, params={"change": "误伤词移除"})
    assert replaced.status_code == 200 and replaced.headers["etag"] == f'"{v2 + 1}"', replaced.text
    _, third = submit(people, draft(f"本次活动{word}相关安排如下。"))
    assert third["findings"] == [] and third["lexicon_version"] == v2 + 1

    # -- another replica stores a version (here: straight into the database): this one notices
    data["categories"]["prohibited.other"]["terms"][word] = "warning"
    version = v2 + 2
    payload = json.dumps(data, ensure_ascii=False).replace("'", "''")
    asyncio.run(review_db(stack, "INSERT INTO lexicon_versions (version, data, created_by, created_at, change) "
                                 f"VALUES ({version}, '{payload}', 'replica-b', '2026-03-02 08:00:00.000000', "
                                 "'another replica')"))
    _, fourth = submit(people, draft(f"本次活动{word}相关安排如下。"))
    assert fourth["lexicon_version"] == version
    assert [(f["rule"], f["severity"]) for f in fourth["findings"]] == [(word, "warning")]

    listed = ops.get("/v1/lexicons/versions").json()["items"]
    assert [v["version"] for v in listed] == [version, v2 + 1, v2, base["version"]]
    assert listed[1]["change"] == "误伤词移除" and listed[-1]["created_by"] == "system"
    old = ops.get(f"/v1/lexicons/versions/{base['version']}")
    assert old.status_code == 200 and word not in old.json()["data"]["categories"]["prohibited.other"]["terms"]
    assert_error(ops.get("/v1/lexicons/versions/999"), 404, "lexicon_version_not_found")


async def test_grpc_override_and_lexicons(stack):
    people = People(stack)
    md = {name: (("authorization", f"Bearer {await asyncio.to_thread(people.token, name)}"),)
          for name in ("reviewer1", "reviewer3", "ops")}
    _, review = await asyncio.to_thread(submit, people, draft(f"印发材料。{SECRET}"))
    finding = next(f for f in review["findings"] if f["severity"] == "blocking")
    async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
        reviews = rpb_grpc.ReviewServiceStub(channel)
        got = await reviews.GetReview(rpb.GetReviewRequest(id=review["id"]), metadata=md["reviewer1"])
        assert got.blocking_open == 1 and [f.id for f in got.findings if f.severity == "blocking"] == [finding["id"]]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.Decide(rpb.DecideRequest(review_id=review["id"], decision="approve", checks=rpb.Checks(
                policy=True, wording=True, secrecy=True, law=True)), metadata=md["reviewer1"])
        assert _code(err) == (grpc.StatusCode.FAILED_PRECONDITION, "blocking_findings")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.OverrideFinding(rpb.OverrideFindingRequest(review_id=review["id"], finding_id=finding["id"],
                                                                     reason="误报"), metadata=md["reviewer1"])
        assert _code(err) == (grpc.StatusCode.PERMISSION_DENIED, "not_last_level_holder")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.OverrideFinding(rpb.OverrideFindingRequest(review_id=review["id"], finding_id=finding["id"]),
                                          metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "validation_failed")
        done = await reviews.OverrideFinding(rpb.OverrideFindingRequest(
            review_id=review["id"], finding_id=finding["id"], reason="引用的是公开文件的标注"), metadata=md["reviewer3"])
        assert done.blocking_open == 0 and done.findings[0].overridden and done.findings[0].override_reason
        approved = await reviews.Decide(rpb.DecideRequest(review_id=review["id"], decision="approve", checks=rpb.Checks(
            policy=True, wording=True, secrecy=True, law=True)), metadata=md["reviewer1"])
        assert approved.current_level == 2

        lexicons = await reviews.GetLexicons(rpb.GetLexiconsRequest(), metadata=md["ops"])
        assert lexicons.version >= 1 and "categories" in json.loads(lexicons.data_json)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.PutLexicons(rpb.PutLexiconsRequest(data_json=lexicons.data_json), metadata=md["ops"])
        assert _code(err) == (grpc.StatusCode.FAILED_PRECONDITION, "if_match_required")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reviews.EditLexiconTerms(rpb.EditLexiconTermsRequest(category="prohibited.other",
                                                                       add={"测试禁词丙": ""}), metadata=md["reviewer3"])
        assert _code(err) == (grpc.StatusCode.PERMISSION_DENIED, "role_required")
        edited = await reviews.EditLexiconTerms(rpb.EditLexiconTermsRequest(
            category="prohibited.other", add={"测试禁词丙": "warning"}, if_match=lexicons.version), metadata=md["ops"])
        assert edited.version == lexicons.version + 1
        assert json.loads(edited.data_json)["categories"]["prohibited.other"]["terms"]["测试禁词丙"] == "warning"
        versions = await reviews.ListLexiconVersions(rpb.ListLexiconVersionsRequest(limit=1), metadata=md["ops"])
        assert [v.version for v in versions.items] == [edited.version] and versions.next_cursor == edited.version


def test_wording_errors_are_data_ops_maintains(stack):
    """Leaders' names and titles are data, none shipped: ops adds a canonical form with a known
    wrong form, and from the next submission on the wrong one is blocking (in Traditional
    characters too) while the canonical one raises nothing. Runs last: it edits the lexicons."""
    people = People(stack)
    ops = people.review("ops")
    current = ops.get("/v1/lexicons").json()
    data = current["data"]
    right, wrong = "王建国省长", "王健国省长"  # a fictional leader
    data["wording"][wrong] = right
    stored = ops.put("/v1/lexicons", json=data, headers={"If-Match": str(current["version"])},
                     params={"change": "新增领导姓名职务"})
    assert stored.status_code == 200, stored.text
    assert stored.json()["data"]["wording"][wrong] == right

    _, passed = submit(people, draft(f"{right}主持召开专题会议。"))
    assert passed["findings"] == [] and passed["lexicon_version"] == stored.json()["version"]
    body = f"{wrong}主持召开专题会议。"
    _, review = submit(people, draft(body))
    [found] = review["findings"]
    assert (found["category"], found["severity"], found["field"], found["suggestion"]) == (
        "wording", "blocking", "body", right)
    assert body[found["start"]:found["end"]] == wrong and review["blocking_open"] == 1
    assert_error(decide(people, "reviewer1", review["id"], decision="approve", checks=ALL_CHECKS), 409,
                 "blocking_findings")
    _, traditional = submit(people, draft("王健國省長主持召開專題會議。"))
    assert [(f["category"], f["severity"]) for f in traditional["findings"]] == [("wording", "blocking")]

"""Who may reach whom (issue 16), against real processes on both databases, REST and gRPC:

- a unit pushes only within its reach: its own accounts and those of the units of its region's
  subtree; `scope: all`, other regions and other regions' accounts need a province-level unit;
  reprints and drafts from clues default to the unit's own reach; checked where targets are
  accepted or changed, at submission and at the last approval (403 `target_out_of_reach`,
  nothing changed);
- a review chain has the three levels of 三审 at least, and nobody who wrote or edited the
  reviewed version decides a level of it;
- an embargoed item (`publish_at` ahead) is neither in the cloud library nor served as an
  attachment outside its unit before `publish_at`;
- raw NUL in a multipart form is 400 `invalid_character`, never 500.
"""
from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import grpc
import httpx
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.events.v1 import events_pb2 as ev
from govmedia.review.v1 import review_pb2 as rpb
from govmedia.review.v1 import review_pb2_grpc as rpb_grpc
from govmedia_kit.db import new_id
from govmedia_kit.reach import out_of_reach, region_prefixes
from tests.conftest import BACKENDS, drop_pg_databases, make_stack
from tests.helpers import assert_error, client, eventually, service_db
from tests.test_content_attachments import PNG, upload
from tests.test_content_review import ALL_CHECKS, People
from tests.test_review_rules import publish_submission

PASSWORD = "reach-sec-pass-2026"
RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}
SERVICES = ("account", "content", "review")
CHAIN = [{"roles": ["section_head"]}, {"roles": ["deputy"]}, {"roles": ["principal", "chief_editor"]}]


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    """The demo province with two cities (甲 with a county below it, 乙), a unit each with an
    editor and three reviewers, and a stream account per unit."""
    stack = make_stack(tmp_path_factory.mktemp(f"reach-{request.param}"), request.param, SERVICES)
    try:
        stack.start(only=SERVICES)
        people = People(stack)
        ops = people.account("ops")
        home = ops.get("/v1/units").json()["items"][0]
        ids = {"province": home["region_id"], "unit_home": home["id"]}
        for key, name, parent in (("a", "甲市", ids["province"]), ("county", "甲县", None), ("b", "乙市", ids["province"])):
            parent = parent or ids["region_a"]
            region = ops.post("/v1/regions", json={"name": name, "parent_id": parent,
                                                   "level": "county" if key == "county" else "city"})
            assert region.status_code == 201, region.text
            unit = ops.post("/v1/units", json={"name": f"{name}政府办", "region_id": region.json()["id"]})
            assert unit.status_code == 201, unit.text
            ids[f"region_{key}"], ids[f"unit_{key}"] = region.json()["id"], unit.json()["id"]
            for role in ("editor", "section_head", "deputy", "principal"):
                made = ops.post("/v1/users", json={"username": f"{role}-{key}", "password": PASSWORD,
                                                   "unit_id": unit.json()["id"], "roles": [role]})
                assert made.status_code == 201, made.text
                people.token(f"{role}-{key}", PASSWORD)
        # a person of the province office who both edits and reviews (deputy in charge)
        both = ops.post("/v1/users", json={"username": "editor-deputy", "password": PASSWORD, "unit_id": home["id"],
                                           "roles": ["editor", "deputy"]})
        assert both.status_code == 201, both.text
        people.token("editor-deputy", PASSWORD)
        ids["editor_deputy"] = both.json()["id"]
        stand_in = ops.post("/v1/users", json={"username": "stand-in-home", "password": PASSWORD,
                                               "unit_id": home["id"], "roles": ["handler"]})
        assert stand_in.status_code == 201, stand_in.text
        people.token("stand-in-home", PASSWORD)
        ids["stand_in"] = stand_in.json()["id"]
        names = {"home": "示范省发布", "a": "甲市发布", "county": "甲县发布", "b": "乙市发布"}
        for key in ("home", "a", "county", "b"):
            account = ops.post("/v1/accounts", json={
                "unit_id": ids[f"unit_{key}"], "platform": "weibo", "name": names[key], "handle": f"reach-sec-{key}",
                "opened_on": "2026-01-05", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
            assert account.status_code == 201, account.text
            ids[f"account_{key}"] = account.json()["id"]
            ids[f"secret_{key}"] = account.json()["client_secret"]
        # content has heard of every unit and account once a draft naming the county's account is taken
        eventually(lambda: people.content("editor-a").post("/v1/drafts", json={
            "title": "准备", "body": "正文", "targets": {"accounts": [ids["account_county"]]}}).status_code == 201,
            timeout=30)
        yield stack, people, ids
    finally:
        stack.stop()
        drop_pg_databases(stack._pg_urls)


def draft(title: str = "甲市通知", **fields) -> dict:
    return {"title": title, "body": "各区县：……", "category": "government", **fields}


def open_review(people: People, reviewer: str, item_id: str) -> dict:
    def check():
        items = people.review(reviewer).get("/v1/reviews", params={"item_id": item_id,
                                                                   "state": "in_review"}).json()["items"]
        return items[0] if items else None
    return eventually(check)


def decide(people: People, who: str, review_id: str, decision: str = "approve"):
    body = {"decision": decision, "checks": ALL_CHECKS, "comment": "同意"}
    return people.review(who).post(f"/v1/reviews/{review_id}/decisions", json=body)


def pass_three_levels(people: People, item_id: str, reviewers: tuple[str, ...]) -> dict:
    review = open_review(people, reviewers[0], item_id)
    for who in reviewers:
        r = decide(people, who, review["id"])
        assert r.status_code == 200, r.text
    return review


def status_of(people: People, who: str, item_id: str, status: str) -> dict:
    def check():
        d = people.content(who).get(f"/v1/drafts/{item_id}").json()
        return d if d["status"] == status else None
    return eventually(check)


def grpc_code(err) -> tuple:
    return err.value.code(), dict(err.value.trailing_metadata() or ()).get("error-code")


# --- the rule itself ----------------------------------------------------------------------

def test_the_reach_rule_as_a_table():
    city, county, other = "/p/a/", "/p/a/k/", "/p/b/"
    regions = {"a": city, "k": county, "b": other, "p": "/p/"}
    accounts = {"acc-a": city, "acc-k": county, "acc-b": other, "acc-p": "/p/"}
    within = [{"regions": ["a"]}, {"regions": ["k"]}, {"accounts": ["acc-a", "acc-k"]},
              {"regions": ["a"], "platforms": ["weibo"]}, {"accounts": ["acc-k"], "unit_kinds": ["department"]}, {}]
    for targets in within:
        assert out_of_reach(city, targets, regions, accounts) is None, targets
    assert out_of_reach(city, {"scope": "all"}, regions, accounts) == {"unit_region": city, "scope": "all"}
    assert out_of_reach(city, {"regions": ["a", "b", "p", "unknown"]}, regions, accounts)["regions"] == [
        "b", "p", "unknown"]
    assert out_of_reach(city, {"accounts": ["acc-a", "acc-b", "acc-p", "x"]}, regions, accounts)["accounts"] == [
        "acc-b", "acc-p", "x"]
    assert out_of_reach(city, {"platforms": ["weibo"]}, regions, accounts)["unbounded"] == ["platforms"]
    assert out_of_reach(county, {"regions": ["a"]}, regions, accounts)["regions"] == ["a"]  # not upwards
    assert out_of_reach("/p/", {"scope": "all"}, {}, {}) is None  # the province level reaches everything
    assert out_of_reach(None, {"regions": ["a"]}, regions, accounts) == {"reason": "unit_region_unknown"}
    assert out_of_reach(None, {}, regions, accounts) is None  # nobody targeted (a featured answer's draft)
    assert region_prefixes("/p/a/k/") == [("p", "/p/"), ("a", "/p/a/"), ("k", "/p/a/k/")]


# --- 1. targets within the author unit's reach ---------------------------------------------

def test_a_city_pushes_within_its_own_subtree_only(world):
    stack, people, ids = world
    city = people.content("editor-a")
    before = len(city.get("/v1/drafts", params={"limit": 200}).json()["items"])
    out = [({"scope": "all"}, {"scope": "all"}),
           ({"regions": [ids["region_b"]]}, {"regions": [ids["region_b"]]}),
           ({"regions": [ids["province"]]}, {"regions": [ids["province"]]}),
           ({"accounts": [ids["account_a"], ids["account_b"]]}, {"accounts": [ids["account_b"]]}),
           ({"accounts": [ids["account_home"]]}, {"accounts": [ids["account_home"]]}),
           ({"platforms": ["weibo"]}, {"unbounded": ["platforms"]}),
           ({"unit_kinds": ["government"]}, {"unbounded": ["unit_kinds"]})]
    for targets, named in out:
        body = assert_error(city.post("/v1/drafts", json=draft(targets=targets)), 403, "target_out_of_reach")
        assert body["error"]["details"] == {"unit_region": f"/{ids['province']}/{ids['region_a']}/", **named}
    # the county below the city cannot reach up to the city
    assert_error(people.content("editor-county").post("/v1/drafts", json=draft(targets={"regions": [ids["region_a"]]})),
                 403, "target_out_of_reach")
    assert len(city.get("/v1/drafts", params={"limit": 200}).json()["items"]) == before  # nothing stored

    for targets in ({"regions": [ids["region_a"]]}, {"regions": [ids["region_county"]]},
                    {"accounts": [ids["account_a"], ids["account_county"]]},
                    {"regions": [ids["region_a"]], "platforms": ["weibo"]}):
        made = city.post("/v1/drafts", json=draft(targets=targets))
        assert made.status_code == 201, made.text
    # the province's office reaches everything
    assert people.content("editor").post("/v1/drafts", json=draft(targets={"scope": "all"})).status_code == 201

    # an edit that widens the targets is refused and changes nothing
    mine = city.post("/v1/drafts", json=draft(targets={"regions": [ids["region_a"]]})).json()
    assert_error(city.put(f"/v1/drafts/{mine['id']}", headers={"If-Match": "1"},
                          json=draft(targets={"scope": "all"})), 403, "target_out_of_reach")
    assert_error(city.put(f"/v1/drafts/{mine['id']}", headers={"If-Match": "1"},
                          json=draft(targets={"regions": [ids["region_a"], ids["region_b"]]})),
                 403, "target_out_of_reach")
    kept = city.get(f"/v1/drafts/{mine['id']}").json()
    assert (kept["version"], kept["targets"]) == (1, {"regions": [ids["region_a"]]})
    assert city.put(f"/v1/drafts/{mine['id']}", headers={"If-Match": "1"},
                    json=draft(targets={"accounts": [ids["account_county"]]})).status_code == 200

    # submission checks again: targets stored behind the service's back (or before the rule)
    asyncio.run(service_db(stack, "content", "UPDATE drafts SET targets = '{\"scope\": \"all\"}' "
                                             f"WHERE id = '{mine['id']}'"))
    assert_error(city.post(f"/v1/drafts/{mine['id']}/submit"), 403, "target_out_of_reach")
    assert city.get(f"/v1/drafts/{mine['id']}").json()["status"] == "draft"
    assert people.review("section_head-a").get("/v1/reviews", params={"item_id": mine["id"]}).json()["items"] == []


def test_reach_over_grpc(world):
    stack, people, ids = world

    async def run():
        md = lambda name: (("authorization", f"Bearer {people.token(name)}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            fields = lambda targets: cpb.DraftFields(title="甲市通知", body="正文", targets=targets)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateDraft(cpb.CreateDraftRequest(fields=fields(ev.Targets(all=True))),
                                       metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "target_out_of_reach")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateDraft(cpb.CreateDraftRequest(fields=fields(ev.Targets(regions=[ids["region_b"]]))),
                                       metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "target_out_of_reach")
            made = await stub.CreateDraft(cpb.CreateDraftRequest(fields=fields(ev.Targets(regions=[ids["region_a"]]))),
                                          metadata=md("editor-a"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.UpdateDraft(cpb.UpdateDraftRequest(id=made.id, if_match=1, fields=fields(
                    ev.Targets(accounts=[ids["account_home"]]))), metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "target_out_of_reach")
            again = await stub.GetDraft(cpb.GetDraftRequest(id=made.id), metadata=md("editor-a"))
            assert again.version == 1 and list(again.fields.targets.regions) == [ids["region_a"]]
    asyncio.run(run())


def test_the_last_approval_checks_the_submitted_targets(world):
    """A submission whose targets are beyond its unit's reach (one forged on the bus, or
    submitted before the rule) passes no last level: 403, the review stays where it is."""
    stack, people, ids = world
    user_ids = {u["username"]: u["id"] for u in people.account("ops").get(
        "/v1/users", params={"limit": 200}).json()["items"]}
    item = ev.ItemSnapshot(item_id=new_id(), version=1, unit_id=ids["unit_a"], author_id=user_ids["editor-a"],
                           title="越权推送", body="正文", targets=ev.Targets(all=True))
    asyncio.run(publish_submission(stack, item))
    review = open_review(people, "section_head-a", item.item_id)
    for who in ("section_head-a", "deputy-a"):
        assert decide(people, who, review["id"]).status_code == 200
    body = assert_error(decide(people, "principal-a", review["id"]), 403, "target_out_of_reach")
    assert body["error"]["details"]["scope"] == "all"
    still = people.review("principal-a").get(f"/v1/reviews/{review['id']}").json()
    assert (still["state"], still["current_level"]) == ("in_review", 3)

    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
            stub = rpb_grpc.ReviewServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Decide(rpb.DecideRequest(review_id=review["id"], decision="approve",
                                                    checks=rpb.Checks(**ALL_CHECKS)),
                                  metadata=(("authorization", f"Bearer {people.token('principal-a')}"),))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "target_out_of_reach")
    asyncio.run(over_grpc())

    # within its reach the same chain approves
    city = people.content("editor-a")
    fine = city.post("/v1/drafts", json=draft(targets={"regions": [ids["region_county"]]})).json()
    assert city.post(f"/v1/drafts/{fine['id']}/submit").status_code == 200
    pass_three_levels(people, fine["id"], ("section_head-a", "deputy-a", "principal-a"))
    status_of(people, "editor-a", fine["id"], "approved")


def test_reprints_and_clue_drafts_default_to_the_units_own_reach(world):
    stack, people, ids = world
    home = people.content("editor")
    original = home.post("/v1/drafts", json=draft("全省通报", targets={"scope": "all"})).json()
    assert home.post(f"/v1/drafts/{original['id']}/submit").status_code == 200
    pass_three_levels(people, original["id"], ("reviewer1", "reviewer2", "reviewer3"))
    status_of(people, "editor", original["id"], "approved")

    city = people.content("editor-a")
    reprint = city.post(f"/v1/library/{original['id']}/reprint")
    assert reprint.status_code == 201, reprint.text
    assert reprint.json()["targets"] == {"regions": [ids["region_a"]]}
    assert_error(city.post(f"/v1/library/{original['id']}/reprint", json={"targets": {"scope": "all"}}),
                 403, "target_out_of_reach")
    assert home.get(f"/v1/library/{original['id']}").json()["reprint_count"] == 1  # the refusal counted nothing
    assert home.post(f"/v1/library/{original['id']}/reprint").json()["targets"] == {"regions": [ids["province"]]}

    # a clue of the city accepted and drafted without targets: the city's reach
    public = client(stack, "content")
    eventually(lambda: public.post("/v1/clues", json={
        "unit_id": ids["unit_a"], "title": "甲市某路段积水", "content": "暴雨后路口积水严重。",
        "location": "甲市人民路", "contact": {"name": "张三", "phone": "13812348000"}}).status_code == 201,
        interval=0.5)
    clue_id = city.get("/v1/clues", params={"status": "new"}).json()["items"][0]["id"]
    assert city.post(f"/v1/clues/{clue_id}/triage", json={"decision": "accept"}).status_code == 200
    assert_error(city.post(f"/v1/clues/{clue_id}/draft", json={"targets": {"scope": "all"}}),
                 403, "target_out_of_reach")
    assert city.get(f"/v1/clues/{clue_id}").json()["status"] == "accepted"  # nothing changed
    drafted = city.post(f"/v1/clues/{clue_id}/draft")
    assert drafted.status_code == 201, drafted.text
    assert drafted.json()["targets"] == {"regions": [ids["region_a"]]}

    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            made = await stub.ReprintItem(cpb.ReprintItemRequest(item_id=original["id"]),
                                          metadata=(("authorization", f"Bearer {people.token('editor-county')}"),))
            assert not made.fields.targets.all and list(made.fields.targets.regions) == [ids["region_county"]]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReprintItem(cpb.ReprintItemRequest(item_id=original["id"], targets=ev.Targets(all=True)),
                                       metadata=(("authorization", f"Bearer {people.token('editor-county')}"),))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "target_out_of_reach")
    asyncio.run(over_grpc())


# --- 2. 三审 and separation of duties ---------------------------------------------------------

def test_a_chain_has_three_levels_at_least(world):
    stack, people, ids = world
    path = f"/v1/review-chains/{ids['unit_a']}"
    principal = people.review("principal-a")
    for levels in ([{"roles": ["principal"]}], [{"roles": ["section_head"]}, {"roles": ["chief_editor"]}]):
        body = assert_error(principal.put(path, json={"levels": levels}), 422, "chain_too_short")
        assert body["error"]["details"] == {"levels": len(levels), "min_levels": 3}
    assert principal.get(path).json()["is_default"]

    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
            stub = rpb_grpc.ReviewServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PutChain(rpb.PutChainRequest(unit_id=ids["unit_a"], levels=[
                    rpb.ChainLevel(roles=["section_head"]), rpb.ChainLevel(roles=["principal"])]),
                    metadata=(("authorization", f"Bearer {people.token('principal-a')}"),))
            assert grpc_code(err) == (grpc.StatusCode.INVALID_ARGUMENT, "chain_too_short")
    asyncio.run(over_grpc())

    # a one-level chain stored before the rule is not in force: reviews open with the three levels
    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
    asyncio.run(service_db(stack, "review",
                           "INSERT INTO review_chains (id, unit_id, version, levels, changed_by, changed_at) VALUES "
                           f"('{new_id()}', '{ids['unit_b']}', 1, '[{{\"roles\": [\"principal\"], "
                           f"\"deadline_minutes\": 30}}]', 'someone', '{now}')"))
    assert people.review("principal-b").get(f"/v1/review-chains/{ids['unit_b']}").json()["is_default"]
    other = people.content("editor-b")
    item = other.post("/v1/drafts", json=draft("乙市通知", targets={"regions": [ids["region_b"]]})).json()
    assert other.post(f"/v1/drafts/{item['id']}/submit").status_code == 200
    review = open_review(people, "section_head-b", item["id"])
    assert [lv["holder_role"] for lv in review["levels"]] == ["section_head", "deputy", "principal|chief_editor"]
    assert_error(decide(people, "principal-b", review["id"]), 403, "not_level_holder")


def test_whoever_edited_the_version_decides_no_level_of_it(world):
    stack, people, ids = world
    home = people.content("editor")
    made = home.post("/v1/drafts", json=draft("省政府通知", targets={"scope": "all"})).json()
    # the deputy in charge, an editor too, changes the text; then the author submits
    edited = people.content("editor-deputy").put(f"/v1/drafts/{made['id']}", headers={"If-Match": "1"},
                                                 json=draft("省政府通知", body="改过的正文", targets={"scope": "all"}))
    assert edited.status_code == 200, edited.text
    assert home.post(f"/v1/drafts/{made['id']}/submit").status_code == 200
    review = open_review(people, "reviewer1", made["id"])
    assert decide(people, "reviewer1", review["id"]).status_code == 200
    assert_error(decide(people, "editor-deputy", review["id"]), 403, "editor_cannot_review")
    mine = people.review("editor-deputy").get("/v1/reviews", params={"mine": "true"}).json()["items"]
    assert review["id"] not in [r["id"] for r in mine]

    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["review"].grpc_target) as channel:
            stub = rpb_grpc.ReviewServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Decide(rpb.DecideRequest(review_id=review["id"], decision="approve",
                                                    checks=rpb.Checks(**ALL_CHECKS)),
                                  metadata=(("authorization", f"Bearer {people.token('editor-deputy')}"),))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "editor_cannot_review")
    asyncio.run(over_grpc())
    # nor through a colleague they lend their role to
    now = datetime.now(timezone.utc)
    lent = eventually(lambda: (r := people.review("editor-deputy").post("/v1/delegations", json={
        "role": "deputy", "reason": "出差期间代为审核", "to_user_id": ids["stand_in"],
        "starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ends_at": (now + timedelta(hours=2)).isoformat()})).status_code == 201 and r)
    assert_error(decide(people, "stand-in-home", review["id"]), 403, "editor_cannot_review")
    assert people.review("editor-deputy").delete(f"/v1/delegations/{lent.json()['id']}").status_code in (200, 204)
    still = people.review("reviewer2").get(f"/v1/reviews/{review['id']}").json()
    assert (still["state"], still["current_level"]) == ("in_review", 2)
    # someone who did not touch it decides the level
    for who in ("reviewer2", "reviewer3"):
        assert decide(people, who, review["id"]).status_code == 200
    status_of(people, "editor", made["id"], "approved")

    # an unrelated item the same deputy did not edit: they review it as usual
    clean = home.post("/v1/drafts", json=draft("另一份通知", targets={"scope": "all"})).json()
    assert home.post(f"/v1/drafts/{clean['id']}/submit").status_code == 200
    other = open_review(people, "reviewer1", clean["id"])
    assert decide(people, "reviewer1", other["id"]).status_code == 200
    assert decide(people, "editor-deputy", other["id"]).status_code == 200


# --- 3. embargo ---------------------------------------------------------------------------

def test_an_embargoed_item_stays_out_of_sight_until_publish_at(world):
    stack, people, ids = world
    home = people.content("editor")
    later = (datetime.now(timezone.utc) + timedelta(days=1)).replace(microsecond=0).isoformat()
    earlier = (datetime.now(timezone.utc) - timedelta(minutes=1)).replace(microsecond=0).isoformat()
    secret = home.post("/v1/drafts", json=draft("明日发布的重要消息", publish_at=later, targets={"scope": "all"})).json()
    assert upload(home, secret["id"], PNG, "image/png", 1, name="图.png").status_code == 201
    released = home.post("/v1/drafts", json=draft("已到发布时间的消息", publish_at=earlier,
                                                  targets={"scope": "all"})).json()
    for item in (secret, released):
        assert home.post(f"/v1/drafts/{item['id']}/submit").status_code == 200
        pass_three_levels(people, item["id"], ("reviewer1", "reviewer2", "reviewer3"))
    approved = status_of(people, "editor", secret["id"], "approved")
    status_of(people, "editor", released["id"], "approved")
    file_url = approved["attachments"][0]["url"]

    outsider = people.content("editor-a")
    listed = [i["id"] for i in outsider.get("/v1/library", params={"limit": 200}).json()["items"]]
    assert released["id"] in listed and secret["id"] not in listed
    assert outsider.get("/v1/library", params={"q": "明日发布"}).json()["items"] == []
    assert_error(outsider.get(f"/v1/library/{secret['id']}"), 404, "library_item_not_found")
    assert_error(outsider.post(f"/v1/library/{secret['id']}/reprint"), 404, "library_item_not_found")
    assert_error(outsider.get(file_url), 403, "other_unit")
    matrix_token = httpx.post(f"{stack.services['account'].base_url}/v1/auth/token", data={
        "grant_type": "client_credentials", "client_id": ids["account_home"],
        "client_secret": ids["secret_home"]}).json()["access_token"]
    assert_error(client(stack, "content", matrix_token).get(file_url), 403, "client_not_allowed")
    assert outsider.get(f"/v1/library/{released['id']}").status_code == 200

    # its own unit's people (its reviewers among them) and the province's ops see it
    for who in ("editor", "reviewer3", "ops"):
        assert secret["id"] in [i["id"] for i in people.content(who).get(
            "/v1/library", params={"limit": 200}).json()["items"]], who
        assert people.content(who).get(f"/v1/library/{secret['id']}").status_code == 200
        assert people.content(who).get(file_url).content == PNG
    # but nobody reprints it before publish_at: a reprint is another unit's draft, embargo-free
    assert_error(people.content("ops").post(f"/v1/library/{secret['id']}/reprint"), 404, "library_item_not_found")

    async def over_grpc():
        md = lambda name: (("authorization", f"Bearer {people.token(name)}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetLibraryItem(cpb.GetLibraryItemRequest(id=secret["id"]), metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.NOT_FOUND, "library_item_not_found")
            found = await stub.ListLibrary(cpb.ListLibraryRequest(q="发布", limit=200), metadata=md("editor-a"))
            assert secret["id"] not in [i.id for i in found.items] and released["id"] in [i.id for i in found.items]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetAttachment(cpb.GetAttachmentRequest(id=approved["attachments"][0]["id"]),
                                         metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.PERMISSION_DENIED, "other_unit")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ReprintItem(cpb.ReprintItemRequest(item_id=secret["id"]), metadata=md("editor-a"))
            assert grpc_code(err) == (grpc.StatusCode.NOT_FOUND, "library_item_not_found")
    asyncio.run(over_grpc())

    # once publish_at has come, everyone signed in sees it
    asyncio.run(service_db(stack, "content", f"UPDATE drafts SET publish_at = '{earlier.replace('+00:00', 'Z')}' "
                                             f"WHERE id = '{secret['id']}'"))
    assert outsider.get(f"/v1/library/{secret['id']}").status_code == 200
    assert outsider.get(file_url).content == PNG


# --- 4. NUL in multipart forms --------------------------------------------------------------

def multipart(*fields: tuple[bytes, bytes, bytes]) -> bytes:
    out = b""
    for name, value, extra in fields:
        out += b'--xyz\r\nContent-Disposition: form-data; name="' + name + b'"' + extra + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--xyz--\r\n"


FORM = {"Content-Type": "multipart/form-data; boundary=xyz"}


def test_nul_in_a_multipart_form_is_400_not_500(world):
    stack, people, ids = world
    token = client(stack, "account")
    # the token endpoint is a form: a NUL in a field's value or a field's name
    for body in (multipart((b"grant_type", b"client_credentials", b""), (b"client_id", b"ab\x00cd", b""),
                           (b"client_secret", b"s" * 20, b"")),
                 multipart((b"username", b"edi\x00tor", b""), (b"password", b"demo-pass-2026", b"")),
                 multipart((b"user\x00name", b"editor", b""), (b"password", b"demo-pass-2026", b""))):
        assert_error(token.post("/v1/auth/token", content=body, headers=FORM), 400, "invalid_character")
    # a file part's bytes may hold NUL: that is no refusal of the guard's
    binary = token.post("/v1/auth/token", headers=FORM, content=multipart(
        (b"username", b"editor", b""), (b"password", b"demo-pass-2026", b""),
        (b"avatar", b"\x89PNG\x00\x00", b'; filename="a.png"')))
    assert binary.status_code == 200, binary.text

    # content: drafts, clues and attachment uploads
    editor = people.content("editor")
    mine = editor.post("/v1/drafts", json=draft(targets={"scope": "all"})).json()
    for path in ("/v1/drafts", "/v1/clues", f"/v1/drafts/{mine['id']}/submit", f"/v1/library/{mine['id']}/reprint"):
        assert_error(editor.post(path, content=multipart((b"title", b"a\x00b", b"")), headers=FORM),
                     400, "invalid_character")
    # an upload is the raw file, never a form: a form there is refused before a byte is read
    upload_form = editor.post(f"/v1/drafts/{mine['id']}/attachments", params={"name": "x.png"},
                              content=multipart((b"file", b"\x89PNG\x00", b'; filename="x\x00.png"')),
                              headers={**FORM, "If-Match": "1"})
    assert_error(upload_form, 415, "unsupported_attachment_type")
    after = editor.get(f"/v1/drafts/{mine['id']}").json()
    assert (after["version"], after["attachments"], after["status"]) == (1, [], "draft")
    # review: a decision sent as a form
    assert_error(people.review("reviewer1").post(f"/v1/reviews/{new_id()}/decisions", headers=FORM,
                                                 content=multipart((b"decision", b"appro\x00ve", b""))),
                 400, "invalid_character")
    assert json.loads(token.get("/healthz").text)["status"] == "ok"  # the service is none the worse

"""Region reach across the services: ops, the regulator and the supervisor of a city reach the
units of that city's subtree, and nothing of a sibling city or of the province above it; the
province's people reach everything. Lists answer with what the caller reaches."""
from __future__ import annotations

import csv
import io

import jwt
import pytest

from tests.helpers import assert_error, client, eventually, login

PASSWORD = "reach-pass-2026"
RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}
DRAFT = {"title": "市里的消息", "body": "正文", "targets": {"scope": "all"}}


@pytest.fixture
def province(stack_factory, db_backend):
    """Two cities under the demo province, a unit in each, people in both, an account each."""
    stack = stack_factory(db_backend, only=("account", "content", "review", "dispatch"))
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]
    ids = {"province": home["region_id"], "home_unit": home["id"]}
    for city, name in (("a", "甲"), ("b", "乙")):
        region = ops.post("/v1/regions", json={"name": f"{name}市", "parent_id": home["region_id"], "level": "city"})
        assert region.status_code == 201, region.text
        unit = ops.post("/v1/units", json={"name": f"{name}市政府办", "region_id": region.json()["id"]}).json()
        ids[f"region_{city}"], ids[f"unit_{city}"] = region.json()["id"], unit["id"]
        for role in ("ops", "regulator", "editor", "supervisor"):
            r = ops.post("/v1/users", json={"username": f"{role}-{city}", "password": PASSWORD,
                                            "unit_id": unit["id"], "roles": [role]})
            assert r.status_code == 201, r.text
        account = ops.post("/v1/accounts", json={
            "unit_id": unit["id"], "platform": "weibo", "name": f"{name}市发布", "handle": f"reach-{city}",
            "opened_on": "2026-01-05", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
        assert account.status_code == 201, account.text
        ids[f"account_{city}"] = account.json()["id"]
    home_account = ops.post("/v1/accounts", json={
        "unit_id": home["id"], "platform": "weibo", "name": "示范省政府发布", "handle": "reach-home",
        "opened_on": "2026-01-05", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
    ids["account_home"] = home_account.json()["id"]
    people = {name: login(stack, name, PASSWORD) for name in
              ("ops-a", "regulator-a", "editor-a", "supervisor-a", "editor-b")}
    people.update({name: login(stack, name) for name in ("ops", "regulator")})
    return stack, ids, people


def test_the_token_carries_the_region_path(province):
    stack, ids, people = province
    claims = jwt.decode(people["regulator-a"], options={"verify_signature": False})
    assert claims["region"] == f"/{ids['province']}/{ids['region_a']}/"
    assert jwt.decode(people["ops"], options={"verify_signature": False})["region"] == f"/{ids['province']}/"


def test_a_citys_regulator_keeps_the_citys_ledger_only(province):
    stack, ids, people = province
    city = client(stack, "account", people["regulator-a"])
    whole = client(stack, "account", people["regulator"])

    assert {a["id"] for a in city.get("/v1/accounts").json()["items"]} == {ids["account_a"]}
    assert {a["id"] for a in whole.get("/v1/accounts").json()["items"]} >= {
        ids["account_a"], ids["account_b"], ids["account_home"]}
    # Asking for another region's subtree gives nothing of it.
    assert city.get("/v1/accounts", params={"region": ids["region_b"]}).json()["items"] == []
    rows = list(csv.DictReader(io.StringIO(city.get("/v1/ledger").content.decode("utf-8-sig"))))
    assert [row["account_id"] for row in rows] == [ids["account_a"]]
    assert city.get("/v1/ledger/totals").json()["accounts"] == 1
    assert {u["unit_id"] for u in city.get("/v1/users").json()["items"]} == {ids["unit_a"]}

    assert city.get(f"/v1/accounts/{ids['account_a']}").status_code == 200
    assert_error(city.get(f"/v1/accounts/{ids['account_b']}"), 403, "other_unit")
    assert_error(city.get(f"/v1/accounts/{ids['account_home']}/history"), 403, "other_unit")
    assert_error(city.post(f"/v1/accounts/{ids['account_b']}/closing", json={"reason": "不是我管"}), 403, "other_unit")

    # Shaping the organisation: below its own region only; the approved list is the province's.
    county = city.post("/v1/regions", json={"name": "甲县", "parent_id": ids["region_a"], "level": "county"})
    assert county.status_code == 201 and county.json()["path"].startswith(f"/{ids['province']}/{ids['region_a']}/")
    assert_error(city.post("/v1/regions", json={"name": "乙县", "parent_id": ids["region_b"], "level": "county"}),
                 403, "other_region")
    assert_error(city.post("/v1/units", json={"name": "乙市某局", "region_id": ids["region_b"]}), 403, "other_region")
    assert_error(city.put("/v1/platforms/kuaishou", json={"approved": False}), 403, "province_only")
    assert_error(client(stack, "account", people["ops"]).post(
        "/v1/regions", json={"name": "另一个省", "level": "province"}), 409, "province_exists")

    # Inspections: a round over its own city, never over the province above it.
    assert_error(city.post("/v1/inspections", json={"title": "全省检查", "region_id": ids["province"], "scope": "all"}),
                 403, "other_region")
    round_ = city.post("/v1/inspections", json={"title": "甲市月检", "region_id": ids["region_a"], "scope": "all"})
    assert round_.status_code == 201, round_.text
    assert [e["account_id"] for e in round_.json()["accounts"]] == [ids["account_a"]]
    # The province's round holds every city; the city's regulator sees its own accounts in it
    # and records results for them only.
    whole_round = whole.post("/v1/inspections", json={"title": "全省检查", "region_id": ids["province"],
                                                       "scope": "all"}).json()
    seen = city.get(f"/v1/inspections/{whole_round['id']}").json()
    assert [e["account_id"] for e in seen["accounts"]] == [ids["account_a"]]
    ok = city.post(f"/v1/inspections/{whole_round['id']}/results",
                   json={"account_id": ids["account_a"], "passed": True})
    assert ok.status_code == 200, ok.text
    assert_error(city.post(f"/v1/inspections/{whole_round['id']}/results",
                           json={"account_id": ids["account_b"], "passed": True}), 403, "other_unit")


def test_other_services_scope_ops_to_the_city(province):
    stack, ids, people = province
    editor_a = client(stack, "content", people["editor-a"])
    editor_b = client(stack, "content", people["editor-b"])
    ops_a = client(stack, "content", people["ops-a"])
    ops = client(stack, "content", login(stack, "ops"))
    # A city's editor pushes within the city only (tests/test_security_reach.py), once content
    # has heard of the unit.
    def draft_of(editor, region):
        body = {**DRAFT, "targets": {"regions": [region]}}
        return eventually(lambda: (r := editor.post("/v1/drafts", json=body)).status_code == 201 and r).json()
    mine = draft_of(editor_a, ids["region_a"])
    theirs = draft_of(editor_b, ids["region_b"])

    # Content: the city's ops reads its city's drafts once the unit directory has them.
    eventually(lambda: ops_a.get(f"/v1/drafts/{mine['id']}").status_code == 200)
    assert_error(ops_a.get(f"/v1/drafts/{theirs['id']}"), 403, "other_unit")
    assert {d["id"] for d in ops_a.get("/v1/drafts").json()["items"]} == {mine["id"]}
    assert {mine["id"], theirs["id"]} <= {d["id"] for d in ops.get("/v1/drafts").json()["items"]}
    assert_error(ops_a.post(f"/v1/items/{theirs['id']}/retract", json={"reason": "越权"}), 403, "other_unit")

    # Review: the same reach over the reviews the submissions open.
    for draft, author in ((mine, editor_a), (theirs, editor_b)):
        assert author.post(f"/v1/drafts/{draft['id']}/submit", headers={"If-Match": "1"}).status_code == 200
    review_a = client(stack, "review", people["ops-a"])

    def reviews():
        items = client(stack, "review", login(stack, "ops")).get("/v1/reviews").json()["items"]
        by_item = {r["item_id"]: r for r in items}
        return by_item if {mine["id"], theirs["id"]} <= set(by_item) else None

    by_item = eventually(reviews)
    assert review_a.get(f"/v1/reviews/{by_item[mine['id']]['id']}").status_code == 200
    assert_error(review_a.get(f"/v1/reviews/{by_item[theirs['id']]['id']}"), 403, "other_unit")
    assert {r["item_id"] for r in review_a.get("/v1/reviews").json()["items"]} == {mine["id"]}

    # Dispatch: the city's supervisor watches its city's endpoints only.
    watch = client(stack, "dispatch", people["supervisor-a"])
    eventually(lambda: watch.get(f"/v1/endpoints/{ids['account_a']}").status_code == 200)
    eventually(lambda: watch.get(f"/v1/endpoints/{ids['account_b']}").status_code == 403)
    assert_error(watch.get(f"/v1/endpoints/{ids['account_b']}"), 403, "other_unit")

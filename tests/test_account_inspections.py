"""Inspections (检查) with the account service as a real process, on SQLite and PostgreSQL:
a round over a region subtree (all accounts, or a reproducible sample), results with the
single-item vetoes and the pass rate, rectification by a deadline and its completion, an
overdue rectification flagged once and announced on the bus, measures, and who may do what."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest
from govmedia.events.v1 import events_pb2 as ev
from nats.errors import TimeoutError as NatsTimeout

from services.account.inspections import _summary
from services.account.inspections_models import Inspection
from tests.helpers import assert_error, client, eventually, login

RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}
PASSWORD = "long-enough-pw"
SUBJECT = "govmedia.account.rectification.overdue"


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account",), env={"ACCOUNT_RECTIFICATION_CHECK_INTERVAL_S": "0.5"})


def build_matrix(stack) -> dict:
    """Province (demo) → 示范市 → 示范县, and 样板市 beside it; accounts in each; people in two units."""
    ops = client(stack, "account", login(stack, "ops"))
    province = ops.get("/v1/regions").json()["items"][0]["id"]

    def post(path, body):
        r = ops.post(path, json=body)
        assert r.status_code == 201, r.text
        return r.json()

    city = post("/v1/regions", {"name": "示范市", "parent_id": province, "level": "city"})["id"]
    county = post("/v1/regions", {"name": "示范县", "parent_id": city, "level": "county"})["id"]
    other_city = post("/v1/regions", {"name": "样板市", "parent_id": province, "level": "city"})["id"]
    city_unit = post("/v1/units", {"name": "示范市政府办公室", "region_id": city})["id"]
    county_unit = post("/v1/units", {"name": "示范县政府办公室", "region_id": county})["id"]
    other_unit = post("/v1/units", {"name": "样板市政府办公室", "region_id": other_city})["id"]
    accounts: dict[str, str] = {}
    for unit, name, platforms in ((city_unit, "示范市发布", ("weibo", "wechat", "douyin")),
                                  (county_unit, "示范县发布", ("weibo", "wechat")),
                                  (other_unit, "样板市发布", ("weibo",))):
        for platform in platforms:
            acc = post("/v1/accounts", {"unit_id": unit, "platform": platform, "name": f"{name}{platform}",
                                        "handle": f"{name}-{platform}", "opened_on": "2026-03-02",
                                        "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
            accounts[f"{name}{platform}"] = acc["id"]
    # An application not yet opened is not inspected.
    applied = ops.post("/v1/account-applications", json={
        "unit_id": city_unit, "platform": "kuaishou", "name": "示范市发布快手", "reason": "政务公开",
        "meeting_ref": "2026年第3次常务会", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
    assert applied.status_code == 201 and applied.json()["status"] == "applied", applied.text
    for username, unit, roles in (("city-principal", city_unit, ["principal"]), ("city-editor", city_unit, ["editor"]),
                                  ("county-editor", county_unit, ["editor"])):
        post("/v1/users", {"username": username, "password": PASSWORD, "unit_id": unit, "roles": roles})
    return {"ops": ops, "province": province, "city": city, "county": county, "other_city": other_city,
            "city_unit": city_unit, "county_unit": county_unit, "accounts": accounts,
            "applied": applied.json()["id"]}


async def overdue_events(nats_url: str, want: int, rounds: int = 40) -> list:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe(SUBJECT, durable=None, stream="GOVMEDIA_ACCOUNT")
        got = []
        for _ in range(rounds):
            try:
                got += await sub.fetch(10, timeout=0.5)
            except (NatsTimeout, asyncio.TimeoutError):  # nats-py raises either
                pass
            if len(got) >= want:
                break
        return got
    finally:
        await nc.close()


def test_rounds_results_rectification_and_measures(stack):
    m = build_matrix(stack)
    acc = m["accounts"]
    regulator = client(stack, "account", login(stack, "regulator"))
    ops = m["ops"]
    city_subtree = sorted(acc[k] for k in acc if not k.startswith("样板市"))

    # a full round over the city: the city and the county below it, running accounts only
    r = regulator.post("/v1/inspections", json={"title": "2026年11月全面检查", "region_id": m["city"], "scope": "all"})
    assert r.status_code == 201, r.text
    full = r.json()
    assert sorted(a["account_id"] for a in full["accounts"]) == city_subtree
    assert m["applied"] not in {a["account_id"] for a in full["accounts"]}
    assert full["population"] == 5 and full["accounts_total"] == 5 and full["checked"] == 0
    assert full["pass_rate"] is None and full["opened_by"] and full["opened_at"]
    rid = full["id"]

    # a sample: the same seed draws the same accounts; the draw's seed is kept when not given
    body = {"title": "抽查", "region_id": m["province"], "scope": "sample", "sample_size": 3, "seed": 20261123}
    one, two = (regulator.post("/v1/inspections", json=body).json() for _ in range(2))
    assert len(one["accounts"]) == 3 and one["population"] == 6 and one["seed"] == 20261123
    assert [a["account_id"] for a in one["accounts"]] == [a["account_id"] for a in two["accounts"]]
    drawn = regulator.post("/v1/inspections", json={**body, "seed": None}).json()
    assert isinstance(drawn["seed"], int) and len(drawn["accounts"]) == 3
    assert_error(regulator.post("/v1/inspections", json={**body, "sample_size": 0}), 422, "sample_size_invalid")
    assert_error(regulator.post("/v1/inspections", json={**body, "sample_size": 7}), 422,
                 "sample_size_exceeds_population")
    assert_error(regulator.post("/v1/inspections", json={**body, "sample_size": None}), 422, "sample_size_required")
    assert_error(regulator.post("/v1/inspections", json={**body, "scope": "all"}), 422, "sample_size_not_allowed")
    assert_error(regulator.post("/v1/inspections", json={**body, "scope": "some"}), 422, "validation_failed")
    assert_error(regulator.post("/v1/inspections", json={**body, "region_id": "nowhere"}), 422, "region_not_found")

    # results: a failure needs a veto or notes, a pass has no veto, the account must be in the round
    res = f"/v1/inspections/{rid}/results"
    assert_error(regulator.post(res, json={"account_id": acc["示范市发布weibo"], "passed": False}), 422,
                 "failure_reason_required")
    assert_error(regulator.post(res, json={"account_id": acc["示范市发布weibo"], "passed": True,
                                           "veto": "no_interaction"}), 422, "veto_on_pass")
    assert_error(regulator.post(res, json={"account_id": acc["示范市发布weibo"], "passed": False,
                                           "veto": "too_boring"}), 422, "validation_failed")
    assert_error(regulator.post(res, json={"account_id": acc["样板市发布weibo"], "passed": True}), 422,
                 "account_not_in_round")
    assert_error(regulator.post("/v1/inspections/nope/results", json={"account_id": acc["示范市发布weibo"],
                                                                      "passed": True}), 404, "inspection_not_found")
    first = regulator.post(res, json={"account_id": acc["示范市发布weibo"], "passed": True})
    assert first.status_code == 200, first.text
    replaced = regulator.post(res, json={"account_id": acc["示范市发布weibo"], "passed": False,
                                         "veto": "no_update_two_weeks", "notes": "检查前两周未更新"}).json()
    assert replaced["result"]["passed"] is False and replaced["result"]["veto"] == "no_update_two_weeks"
    assert replaced["result"]["recorded_by"] and replaced["result"]["recorded_at"]
    assert [p["passed"] for p in replaced["previous"]] == [True]  # the replaced result is kept
    assert regulator.post(res, json={"account_id": acc["示范市发布wechat"], "passed": False,
                                     "notes": "留言三个月未回复"}).status_code == 200
    for key in ("示范县发布weibo", "示范县发布wechat"):
        assert regulator.post(res, json={"account_id": acc[key], "passed": True, "notes": "良好"}).status_code == 200

    got = regulator.get(f"/v1/inspections/{rid}").json()
    assert (got["checked"], got["passed"], got["failed"], got["pass_rate"]) == (4, 2, 2, 0.5)
    assert ops.get(f"/v1/inspections/{rid}").json()["pass_rate"] == 0.5  # ops may read
    assert regulator.post(res, json={"account_id": acc["示范市发布douyin"], "passed": True}).status_code == 200
    listed = {i["id"]: i for i in regulator.get("/v1/inspections").json()["items"]}
    assert len(listed) == 4 and listed[rid]["checked"] == 5 and listed[rid]["pass_rate"] == 0.6

    # rectification: only for a failed account; reported done by the account's unit
    rect_path = f"/v1/inspections/{rid}/rectifications"
    assert_error(regulator.post(rect_path, json={"account_id": acc["示范县发布weibo"], "deadline": "2099-12-31",
                                                 "requirement": "x"}), 409, "account_not_failed")
    assert_error(regulator.post(rect_path, json={"account_id": acc["示范市发布weibo"], "deadline": "31/12/2099",
                                                 "requirement": "x"}), 422, "validation_failed")
    ordered = regulator.post(rect_path, json={"account_id": acc["示范市发布weibo"], "deadline": "2099-12-31",
                                              "requirement": "恢复日常更新，每周不少于三条"})
    assert ordered.status_code == 201, ordered.text
    rect = ordered.json()
    assert not rect["overdue"] and rect["ordered_by"] and rect["unit_id"] == m["city_unit"]
    assert_error(regulator.post(rect_path, json={"account_id": acc["示范市发布weibo"], "deadline": "2099-12-31",
                                                 "requirement": "再次"}), 409, "rectification_open")
    county_editor = client(stack, "account", login(stack, "county-editor", PASSWORD))
    city_principal = client(stack, "account", login(stack, "city-principal", PASSWORD))
    done = f"/v1/rectifications/{rect['id']}/done"
    assert_error(county_editor.post(done, json={"note": "已整改"}), 403, "other_unit")
    assert_error(ops.post(done, json={"note": "已整改"}), 403, "role_required")
    assert_error(city_principal.post(done, json={}), 422, "validation_failed")
    finished = city_principal.post(done, json={"note": "已恢复更新，本周发布五条"})
    assert finished.status_code == 200, finished.text
    assert finished.json()["done_at"] and finished.json()["done_note"] == "已恢复更新，本周发布五条"
    assert_error(city_principal.post(done, json={"note": "again"}), 409, "rectification_done")
    assert_error(regulator.post("/v1/rectifications/nope/done", json={"note": "x"}), 404, "rectification_not_found")

    # overdue: a rectification past its deadline is listed, flagged once and announced
    late = regulator.post(rect_path, json={"account_id": acc["示范市发布wechat"], "deadline": "2026-01-05",
                                           "requirement": "建立留言回复机制"}).json()
    assert late["overdue"]
    [overdue] = regulator.get("/v1/rectifications", params={"overdue": "true"}).json()["items"]
    assert overdue["id"] == late["id"]
    assert len(regulator.get("/v1/rectifications").json()["items"]) == 2
    flagged = eventually(lambda: [r for r in regulator.get("/v1/rectifications", params={"overdue": "true"})
                                  .json()["items"] if r["overdue_flagged_at"]])
    assert flagged[0]["id"] == late["id"]
    [event] = asyncio.run(overdue_events(stack.nats_url, 1))
    assert event.headers["ce-subject"] == acc["示范市发布wechat"]
    msg = ev.RectificationOverdue.FromString(event.data)
    assert (msg.rectification_id, msg.inspection_id, msg.deadline) == (late["id"], rid, "2026-01-05")
    # once only: a restart (the watch checks again at start-up) announces nothing more
    stack.restart("account")
    regulator = client(stack, "account", login(stack, "regulator"))
    assert len(asyncio.run(overdue_events(stack.nats_url, 2, rounds=8))) == 1

    # measures on a failed account, listed with the round
    measures = f"/v1/inspections/{rid}/measures"
    made = regulator.post(measures, json={"account_id": acc["示范市发布wechat"], "kind": "interview",
                                          "note": "约谈单位分管负责人", "document_ref": "网管办约〔2026〕5号"})
    assert made.status_code == 201 and made.json()["recorded_by"] and made.json()["recorded_at"], made.text
    assert regulator.post(measures, json={"account_id": acc["示范市发布wechat"], "kind": "public_notice"}
                          ).status_code == 201
    assert_error(regulator.post(measures, json={"account_id": acc["示范市发布wechat"], "kind": "fine"}), 422,
                 "validation_failed")
    assert_error(regulator.post(measures, json={"account_id": acc["示范县发布weibo"], "kind": "warning"}), 409,
                 "account_not_failed")
    got = regulator.get(f"/v1/inspections/{rid}").json()
    assert [x["kind"] for x in got["measures"]] == ["interview", "public_notice"]
    assert len(got["rectifications"]) == 2

    # a unit's people see only their own accounts of the round, with their own figures
    county_view = county_editor.get(f"/v1/inspections/{rid}").json()
    assert {a["unit_id"] for a in county_view["accounts"]} == {m["county_unit"]}
    assert (county_view["checked"], county_view["pass_rate"]) == (2, 1.0)
    assert county_view["rectifications"] == [] and county_view["measures"] == []
    city_view = city_principal.get(f"/v1/inspections/{rid}").json()
    assert len(city_view["accounts"]) == 3 and len(city_view["measures"]) == 2
    assert [r["account_id"] for r in county_editor.get("/v1/rectifications").json()["items"]] == []
    assert len(city_principal.get("/v1/rectifications").json()["items"]) == 2
    county_rounds = {i["id"] for i in county_editor.get("/v1/inspections").json()["items"]}
    assert rid in county_rounds
    # the city's leaders were told of the orders, the overdue one and the measures; the
    # regulator of the overdue one; the county and a city regulator elsewhere of nothing
    told = {(n["kind"], n["about_id"]) for n in city_principal.get("/v1/notices").json()["items"]}
    assert told == {("rectification.ordered", rect["id"]), ("rectification.ordered", late["id"]),
                    ("rectification.overdue", late["id"]), ("inspection.measure", made.json()["id"])} | {
        ("inspection.measure", x["id"]) for x in got["measures"]}
    assert [n["kind"] for n in regulator.get("/v1/notices").json()["items"]] == ["rectification.overdue"]
    assert county_editor.get("/v1/notices").json()["items"] == []
    overdue_notice = next(n for n in city_principal.get("/v1/notices").json()["items"]
                          if n["kind"] == "rectification.overdue")
    assert "2026-01-05" in overdue_notice["body"] and not overdue_notice["read"]
    assert_error(county_editor.post(f"/v1/notices/{overdue_notice['id']}/read"), 404, "notice_not_found")
    for _ in range(2):  # reading twice is reading once
        assert city_principal.post(f"/v1/notices/{overdue_notice['id']}/read").json()["read"]
    unread = city_principal.get("/v1/notices", params={"unread": "true"}).json()["items"]
    assert overdue_notice["id"] not in {n["id"] for n in unread} and len(unread) == len(told) - 1
    assert not regulator.get("/v1/notices").json()["items"][0]["read"]  # read receipts are per person

    # the demo unit has no account in any round
    editor = client(stack, "account", login(stack, "editor"))
    assert editor.get("/v1/inspections").json()["items"] == []
    assert_error(editor.get(f"/v1/inspections/{rid}"), 403, "other_unit")
    assert_error(editor.get("/v1/inspections/nope"), 404, "inspection_not_found")


def test_only_the_regulator_inspects(stack):
    m = build_matrix(stack)
    acc = m["accounts"]
    regulator = client(stack, "account", login(stack, "regulator"))
    rid = regulator.post("/v1/inspections", json={"title": "县级检查", "region_id": m["county"],
                                                  "scope": "all"}).json()["id"]
    regulator.post(f"/v1/inspections/{rid}/results", json={"account_id": acc["示范县发布weibo"], "passed": False,
                                                           "veto": "security_incident"}).raise_for_status()
    body = {"title": "x", "region_id": m["city"], "scope": "all"}
    for name in ("editor", "ops", "supervisor", "reviewer3"):
        who = client(stack, "account", login(stack, name))
        assert_error(who.post("/v1/inspections", json=body), 403, "role_required")
        assert_error(who.post(f"/v1/inspections/{rid}/results", json={"account_id": acc["示范县发布weibo"],
                                                                      "passed": True}), 403, "role_required")
        assert_error(who.post(f"/v1/inspections/{rid}/rectifications", json={
            "account_id": acc["示范县发布weibo"], "deadline": "2099-01-01", "requirement": "x"}), 403, "role_required")
        assert_error(who.post(f"/v1/inspections/{rid}/measures", json={"account_id": acc["示范县发布weibo"],
                                                                       "kind": "warning"}), 403, "role_required")
    county_editor = client(stack, "account", login(stack, "county-editor", PASSWORD))
    assert_error(county_editor.post("/v1/inspections", json=body), 403, "role_required")
    assert_error(county_editor.post(f"/v1/inspections/{rid}/results", json={"account_id": acc["示范县发布weibo"],
                                                                            "passed": True}), 403, "role_required")
    # an empty region cannot be inspected in full; a city-unit user does not see the county's round
    empty = client(stack, "account", login(stack, "ops")).post(
        "/v1/regions", json={"name": "空白县", "parent_id": m["other_city"], "level": "county"}).json()["id"]
    assert_error(regulator.post("/v1/inspections", json={"title": "x", "region_id": empty, "scope": "all"}), 422,
                 "no_accounts_to_inspect")
    city_editor = client(stack, "account", login(stack, "city-editor", PASSWORD))
    assert_error(city_editor.get(f"/v1/inspections/{rid}"), 403, "other_unit")
    assert city_editor.get("/v1/inspections").json()["items"] == []
    assert_error(regulator.post("/v1/inspections", json={"title": "", "region_id": m["city"], "scope": "all"}), 422,
                 "validation_failed")
    assert_error(regulator.post("/v1/inspections", json={**body, "extra": 1}), 422, "validation_failed")
    assert_error(client(stack, "account").get("/v1/inspections"), 401, "unauthenticated")


def test_pass_rate_of_the_national_example():
    """43 checked, 14 failed: 29 / 43 = 67.44 %, as the national report rounds it to 67 %."""
    round_ = Inspection(title="x", region_id="r", scope="all", population=43, opened_by="u",
                        opened_at=datetime.now(UTC))
    figures = _summary(round_, passed=29, failed=14, total=43)
    assert (figures.checked, figures.passed, figures.failed, figures.pass_rate) == (43, 29, 14, 0.6744)
    assert _summary(round_, passed=0, failed=0, total=43).pass_rate is None

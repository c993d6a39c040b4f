"""The account service's authorisation matrix: every role, in the endpoint's unit, in
another unit of the same (province) region, and in a unit of a city (a subtree that does
not hold the endpoint's unit), against every endpoint. A refusal is 403 with a stable code;
an allowed caller is never refused for who it is (it may still meet 404/409/422 for the state).
A second test checks that the matrix names every route the service serves."""
from __future__ import annotations

import re
from datetime import date

import httpx
import pytest

from govmedia_kit import holiday_law
from govmedia_kit.auth import ROLES
from services.account.service import build_spec
from tests.helpers import client, login

PASSWORD = "matrix-pass-2026"
RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}
STAFF = {"editor", "section_head", "deputy", "principal", "chief_editor"}
EVERYONE = set(ROLES)
READERS = {"regulator", "supervisor", "ops"}
INSPECTION_READERS = {"regulator", "ops"}  # see other units' accounts in a round (inspections.READERS)
# Served to anyone without a bearer token, so outside the matrix.
PUBLIC = {("POST", "/v1/auth/token"), ("GET", "/.well-known/jwks.json"),
          # the revocation list the other services fetch with the JWKS; not routed by the ingress
          ("GET", "/internal/token-revocations")}
USER_MANAGERS = {"ops", "principal"}  # of an existing user: ops by reach, the unit's principal (unit roles)


@pytest.fixture
def world(stack_factory):
    """The world below, plus a round over the province in which the demo unit's stream account
    failed and was ordered rectified."""
    stack, tokens, ids = build_world(stack_factory)
    regulator = client(stack, "account", login(stack, "regulator"))
    rnd = regulator.post("/v1/inspections", json={"title": "月度检查", "region_id": ids["region"],
                                                  "scope": "all"}).json()
    r = regulator.post(f"/v1/inspections/{rnd['id']}/results", json={
        "account_id": ids["stream"], "passed": False, "veto": "no_interaction"})
    assert r.status_code == 200, r.text
    rect = regulator.post(f"/v1/inspections/{rnd['id']}/rectifications", json={
        "account_id": ids["stream"], "deadline": "2099-12-31", "requirement": "恢复互动"}).json()
    return stack, tokens, {**ids, "inspection": rnd["id"], "rectification": rect["id"]}


def build_world(stack_factory):
    """The demo unit (its accounts are the objects), another unit, a city's unit, and one user
    per role in each. Returns (stack, tokens by (role, where), ids)."""
    stack = stack_factory("sqlite", only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    unit = ops.get("/v1/units").json()["items"][0]
    other = ops.post("/v1/units", json={"name": "省发展改革委", "region_id": unit["region_id"]}).json()
    city = ops.post("/v1/regions", json={"name": "示范市", "parent_id": unit["region_id"], "level": "city"}).json()
    city_unit = ops.post("/v1/units", json={"name": "示范市政府办", "region_id": city["id"]}).json()
    tokens = {}
    for where, unit_id in (("own", unit["id"]), ("other", other["id"]), ("city", city_unit["id"])):
        for role in ROLES:
            name = f"{where}-{role}".replace("_", "-")
            r = ops.post("/v1/users", json={"username": name, "password": PASSWORD, "unit_id": unit_id, "roles": [role]})
            assert r.status_code == 201, r.text
            tokens[(role, where)] = login(stack, name, PASSWORD)
    stream = ops.post("/v1/accounts", json={
        "unit_id": unit["id"], "platform": "app", "name": "示范省政务客户端", "handle": "authz-app",
        "opened_on": "2026-01-05", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}}).json()
    applied = client(stack, "account", login(stack, "editor")).post("/v1/account-applications", json={
        "unit_id": unit["id"], "platform": "weibo", "name": "示范省政府发布", "reason": "政务公开",
        "meeting_ref": "第1次会议", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}}).json()
    filing = ops.get("/v1/filings").json()["items"][0]
    # the object of user administration: an editor of the unit whose token the matrix does not use
    target = ops.post("/v1/users", json={"username": "matrix-target", "password": PASSWORD, "unit_id": unit["id"],
                                         "roles": ["editor"]}).json()
    return stack, tokens, {"unit": unit["id"], "region": unit["region_id"], "stream": stream["id"],
                           "applied": applied["id"], "filing": filing["id"], "target": target["id"]}


def next_year_notice() -> dict:
    """A notice for next year with the law's days off only (synthetic TEST data)."""
    year = date.today().year + 1
    return {"year": year, "holidays": [d.isoformat() for d in holiday_law.statutory_holidays(year) if d.weekday() < 5],
            "notice": {"number": "国办发明电（测试）", "published_on": date.today().isoformat()}}


def rest_notice() -> dict:
    return {k: v for k, v in next_year_notice().items() if k != "year"}


def endpoints(ids: dict):
    """(method, path, body, roles allowed from the object's own unit, from another unit of its
    region, and from a unit of a city, which is outside the object's subtree: there only the
    lists answer, each with what the caller reaches)."""
    a, s, rnd = ids["applied"], ids["stream"], ids["inspection"]
    account = {"unit_id": ids["unit"], "platform": "wechat", "name": "示范省发布", "handle": "authz-wx",
               "opened_on": "2026-01-05", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}}
    application = {"unit_id": ids["unit"], "platform": "douyin", "name": "示范省政府抖音", "reason": "r",
                   "meeting_ref": "m", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}}
    cross = {"ops", "regulator"}
    rows = [
        ("GET", "/v1/regions", None, EVERYONE, EVERYONE),
        ("POST", "/v1/regions", {"name": "某市", "parent_id": ids["region"], "level": "city"}, cross, cross),
        ("GET", "/v1/units", None, EVERYONE, EVERYONE),
        ("POST", "/v1/units", {"name": "某局", "region_id": ids["region"]}, cross, cross),
        ("GET", "/v1/users", None, EVERYONE, EVERYONE),
        ("POST", "/v1/users", {"username": "made-{n}", "password": PASSWORD, "unit_id": ids["unit"],
                               "roles": ["editor"]}, {"ops"}, {"ops"}),
        ("GET", f"/v1/users/{ids['target']}", None, EVERYONE, cross),
        ("POST", f"/v1/users/{ids['target']}/deactivate", {"reason": "r"}, USER_MANAGERS, {"ops"}),
        ("POST", f"/v1/users/{ids['target']}/reactivate", {}, USER_MANAGERS, {"ops"}),
        ("PUT", f"/v1/users/{ids['target']}/roles", {"roles": ["editor"]}, USER_MANAGERS, {"ops"}),
        ("POST", f"/v1/users/{ids['target']}/password", {"password": PASSWORD}, USER_MANAGERS, {"ops"}),
        ("GET", f"/v1/users/{ids['target']}/audit", None, USER_MANAGERS, {"ops"}),
        ("GET", f"/v1/users/{ids['target']}/audit/verify", None, USER_MANAGERS, {"ops"}),
        ("GET", "/v1/accounts", None, EVERYONE, EVERYONE),
        ("POST", "/v1/accounts", account, cross, cross),
        ("GET", f"/v1/accounts/{s}", None, EVERYONE, READERS),
        ("GET", f"/v1/accounts/{s}/history", None, EVERYONE, READERS),
        ("POST", "/v1/account-applications", application, STAFF | {"ops"}, {"ops"}),
        ("POST", f"/v1/accounts/{a}/approve-opening", {}, {"principal"}, set()),
        ("POST", f"/v1/accounts/{a}/open", {"handle": "h-{n}", "opened_on": "2026-03-02"}, STAFF | {"ops"}, {"ops"}),
        ("POST", f"/v1/accounts/{s}/changes", {"note": "n", "name": "示范省政务客户端"},
         {"principal", "chief_editor"} | cross, cross),
        ("POST", f"/v1/accounts/{a}/closing", {"reason": "r"}, STAFF | cross, cross),
        ("POST", f"/v1/accounts/{a}/approve-closing", {}, {"principal"}, set()),
        ("POST", f"/v1/accounts/{a}/deregister", {"deregistered_on": "2026-03-02"}, STAFF | {"ops"}, {"ops"}),
        ("GET", "/v1/filings", None, READERS, READERS),
        ("POST", f"/v1/filings/{ids['filing']}/file", {}, cross, cross),
        ("POST", f"/v1/units/{ids['unit']}/platform-exceptions", {"platform": "bilibili", "reason": "r"}, cross, cross),
        ("GET", "/v1/platforms", None, EVERYONE, EVERYONE),
        ("PUT", "/v1/platforms/kuaishou", {"approved": True}, {"regulator"}, {"regulator"}),
        ("GET", "/v1/ledger", None, READERS, READERS),
        ("GET", "/v1/ledger/totals", None, READERS, READERS),
        ("GET", "/v1/auth/keys", None, {"ops"}, {"ops"}),
        ("POST", "/v1/inspections", {"title": "月度检查", "region_id": ids["region"], "scope": "all"},
         {"regulator"}, {"regulator"}),
        ("GET", f"/v1/accounts/{s}/activity", None, EVERYONE, READERS),
        ("GET", "/v1/activity/dormant", None, READERS, READERS),
        ("POST", f"/v1/accounts/{s}/client-secret", None, cross, cross),
        ("DELETE", f"/v1/accounts/{s}/client-secret", None, cross, cross),
        ("POST", "/v1/clients/nats-credentials", {}, set(), set()),
        ("POST", "/v1/auth/keys/rotate", {}, {"ops"}, {"ops"}),
        # the second factor: every person for themselves (an unknown code is 422/409, not a
        # refusal); ops reset another user's, by reach
        ("POST", "/v1/auth/totp/enrol", {}, EVERYONE, EVERYONE, EVERYONE),
        ("POST", "/v1/auth/totp/confirm", {"code": "000000"}, EVERYONE, EVERYONE, EVERYONE),
        ("POST", "/v1/auth/totp/disable", {"code": "000000"}, EVERYONE, EVERYONE, EVERYONE),
        ("DELETE", f"/v1/users/{ids['target']}/totp", None, {"ops"}, {"ops"}),
        # RFC 7009: no bearer token needed, unknown tokens answer alike, so nobody is refused
        ("POST", "/v1/auth/revoke", {"form": {"token": "never-issued-{n}"}}, EVERYONE, EVERYONE, EVERYONE),
        # inspections: the regulator writes; the unit's people see their own accounts' entries
        ("GET", "/v1/inspections", None, EVERYONE, EVERYONE),
        ("GET", f"/v1/inspections/{rnd}", None, EVERYONE, INSPECTION_READERS),
        ("POST", f"/v1/inspections/{rnd}/results", {"account_id": s, "passed": False, "veto": "no_interaction"},
         {"regulator"}, {"regulator"}),
        ("POST", f"/v1/inspections/{rnd}/rectifications", {"account_id": s, "deadline": "2099-12-31",
                                                           "requirement": "r"}, {"regulator"}, {"regulator"}),
        ("POST", f"/v1/inspections/{rnd}/measures", {"account_id": s, "kind": "warning"}, {"regulator"},
         {"regulator"}),
        ("GET", "/v1/rectifications", None, EVERYONE, EVERYONE),
        ("POST", f"/v1/rectifications/{ids['rectification']}/done", {"note": "done"},
         {"regulator", "principal", "chief_editor", "editor"}, {"regulator"}),
        # notices: everyone reads their own inbox; an unknown notice is 404, not a refusal
        ("GET", "/v1/notices", None, EVERYONE, EVERYONE),
        ("POST", "/v1/notices/nope/read", None, EVERYONE, EVERYONE, EVERYONE),
        # the calendar: every signed-in person reads it; ops of the province load a notice
        ("GET", "/v1/calendar/years", None, EVERYONE, EVERYONE, EVERYONE),
        ("GET", "/v1/calendar/years/2027/versions", None, EVERYONE, EVERYONE, EVERYONE),
        ("PUT", f"/v1/calendar/years/{next_year_notice()['year']}", rest_notice(), {"ops"}, {"ops"}),
    ]
    lists = {"/v1/regions", "/v1/units", "/v1/users", "/v1/accounts", "/v1/filings", "/v1/platforms", "/v1/ledger",
             "/v1/ledger/totals", "/v1/activity/dormant", "/v1/inspections", "/v1/rectifications", "/v1/notices"}
    return [(method, path, body, own, other, city[0] if city else other if method == "GET" and path in lists else set())
            for method, path, body, own, other, *city in rows]


def test_matrix_covers_every_route():
    """Every route of the service but the public ones is in the matrix (a new endpoint must be added)."""
    ids = dict.fromkeys(("applied", "stream", "unit", "region", "filing", "inspection", "rectification", "target"),
                        "x")
    served = {(method, route.path) for router in build_spec().routers for route in router.routes
              for method in route.methods}
    pattern = lambda path: re.compile(re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")  # noqa: E731
    covered = {(method, template) for method, path, *_ in endpoints(ids) for m, template in served
               if m == method and pattern(template).match(path)}
    assert served - covered == PUBLIC


def test_every_role_against_every_endpoint(world):
    stack, tokens, ids = world
    wrong = []
    n = 0
    with httpx.Client(base_url=stack.services["account"].base_url, timeout=15) as http:
        for method, path, body, own, other, city in endpoints(ids):
            for (role, where), token in tokens.items():
                n += 1
                form = body.get("form") if body else None
                fill = lambda fields: {k: (v.format(n=n) if isinstance(v, str) else v)  # noqa: E731
                                       for k, v in fields.items()}
                sent = {"data": fill(form)} if form else {"json": fill(body) if body else body}
                r = http.request(method, path, headers={"Authorization": f"Bearer {token}"}, **sent)
                allowed = role in {"own": own, "other": other, "city": city}[where]
                refused = r.status_code in (401, 403)
                if allowed == refused or (refused and r.json()["error"]["code"] not in (
                        "role_required", "other_unit", "other_region", "province_only", "client_required")):
                    wrong.append(f"{method} {path} as {role} ({where} unit): {r.status_code} {r.text[:120]}")
    assert not wrong, "\n".join(wrong)

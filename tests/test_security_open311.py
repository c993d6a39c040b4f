"""Issue 16, citizens' data on the petition service, as real processes (account + petition) on
each database, with tracing exported to an in-memory OTLP collector:

- Open311 shows anyone only what a public map may: the categories public by policy (never a
  report or a formal petition), titles and notes redacted, coordinates on the 0.01° grid, no
  address, no agency; the full rows need a key with `open311:read_full`, which ops make (shown
  once, stored hashed), list and revoke (audited), on REST and gRPC; the list is paged and
  rate-limited per client address;
- the citizen's receipt, tracking view and Open311 never tell that a matter was linked to an
  earlier one of the same phone (staff still see it);
- tracking codes never reach span attributes, the service's log or /metrics.

One stack per database serves every test of this file (each test uses its own client
addresses, through the trusted proxy's X-Forwarded-For, so rate limits do not mix).
"""
from __future__ import annotations

import hashlib
import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import grpc
import httpx
import pytest

from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia_cli.stack import TLS, Stack
from govmedia_kit.auth import ROLES
from tests.conftest import BACKENDS, drop_pg_databases, make_stack
from tests.helpers import assert_error, auth, eventually, login, service_db
from tests.otlp_receiver import OtlpReceiver

LEGACY_KEY = "open311-security-key-0123456789"  # PETITION_OPEN311_API_KEYS: posting only
READ_RATE = 20
PASSWORD = "sec-pass-2026"
PHONE, ID_NUMBER, NAME = "13812345678", "11010519491231002X", "张三"
TITLE = f"{NAME}投诉 {PHONE} 身份证{ID_NUMBER} 夜间施工"
LAT, LON = 23.129163, 113.264435
_addresses = itertools.count(1)


@dataclass
class World:
    stack: Stack
    otlp: OtlpReceiver
    ops: httpx.Client
    handler: httpx.Client
    home_unit: dict

    def public(self) -> httpx.Client:
        """A citizen at an address of their own (the service trusts the local proxy's header)."""
        n = next(_addresses)
        return httpx.Client(base_url=self.stack.services["petition"].base_url, timeout=15, verify=TLS,
                            headers={"X-Forwarded-For": f"10.16.{n // 250}.{n % 250 + 1}"})

    def as_user(self, username: str, password: str = "demo-pass-2026") -> httpx.Client:
        return httpx.Client(base_url=self.stack.services["petition"].base_url, timeout=15, verify=TLS,
                            headers={**auth(login(self.stack, username, password)), "X-Forwarded-For": "10.99.0.1"})


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    backend = request.param
    with OtlpReceiver() as otlp:
        stack = make_stack(tmp_path_factory.mktemp(f"security-open311-{backend}"), backend, ("account", "petition"))
        stack.extra_env.update(otlp.env())
        stack.extra_env.update({"PETITION_OPEN311_API_KEYS": LEGACY_KEY, "PETITION_TRUSTED_PROXIES": "127.0.0.1/32",
                                "PETITION_OPEN311_READ_RATE_PER_MINUTE": str(READ_RATE)})
        try:
            stack.start(only=("account", "petition"))
            account_ops = httpx.Client(base_url=stack.services["account"].base_url, verify=TLS, timeout=15,
                                       headers=auth(login(stack, "ops")))
            home = account_ops.get("/v1/units").json()["items"][0]
            w = World(stack, otlp, None, None, home)  # type: ignore[arg-type]
            w.ops, w.handler = w.as_user("ops"), w.as_user("handler")
            yield w
        finally:
            stack.stop()
            drop_pg_databases(stack._pg_urls)  # type: ignore[attr-defined]


def _intake(w: World, **fields) -> dict:
    body = {"category": "complaint", "title": "小区噪音扰民", "content": "夜间施工至凌晨两点。", "channel": "web",
            "contact": {"name": NAME, "phone": PHONE}, **fields}
    r = w.public().post("/v1/petitions", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _answer(w: World, pid: str) -> None:
    """Accept at the provincial desk, assign to the demo unit, answer (the demo handler is both)."""
    assert w.handler.post(f"/v1/petitions/{pid}/accept", json={}).status_code == 200

    def assign():
        r = w.handler.post(f"/v1/petitions/{pid}/assign", json={"unit_id": w.home_unit["id"]})
        if r.status_code == 422 and r.json()["error"]["code"] == "unknown_unit":
            return None  # the directory has not heard of the unit yet
        assert r.status_code == 200, r.text
        return r
    eventually(assign)
    r = w.handler.post(f"/v1/petitions/{pid}/answer", json={"answer": f"已联系{NAME}（{PHONE}），施工已停止。"})
    assert r.status_code == 200, r.text


def _key(w: World, *scopes: str, name: str = "地图客户端") -> dict:
    r = w.ops.post("/v1/open311/keys", json={"name": name, "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return r.json()


def _ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [x["service_request_id"] for x in response.json()]


def _o311_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    [error] = response.json()
    assert error["code"] == status and error["error_code"] == code and error["description"], error


# --- Open311: the public face and the full rows -------------------------------------------

def test_open311_shows_anyone_only_what_a_public_map_may(world):
    w = world
    complaint = _intake(w, title=TITLE, lat=LAT, lon=LON, location="示范市幸福路 1 号 3 栋 502")
    report = _intake(w, category="report", title=f"举报 {PHONE} 违规经营", lat=LAT, lon=LON)
    formal = _intake(w, category="petition", title="信访事项", lat=LAT, lon=LON)
    _answer(w, complaint["id"])
    hidden = {report["id"], formal["id"]}
    o = w.public()

    # The list and the single request: only public categories, masked, coarse, no address or agency.
    listed = o.get("/open311/v2/requests.json", params={"page_size": 200})
    assert complaint["id"] in _ids(listed) and not hidden & set(_ids(listed))
    [one] = [x for x in listed.json() if x["service_request_id"] == complaint["id"]]
    assert o.get(f"/open311/v2/requests/{complaint['id']}.json").json() == [one]
    for text in (one["description"], one["status_notes"]):
        assert PHONE not in text and ID_NUMBER not in text and NAME not in text, text
    assert "张某" in one["description"] and "夜间施工" in one["description"]
    assert one["status"] == "closed" and "施工已停止" in one["status_notes"]
    assert (one["lat"], one["long"]) == (23.13, 113.26)
    assert one["address"] is None and one["agency_responsible"] is None
    xml = o.get("/open311/v2/requests.xml", params={"page_size": 200})
    assert xml.status_code == 200 and PHONE not in xml.text and ID_NUMBER not in xml.text
    assert not any(r in xml.text for r in hidden) and "23.129163" not in xml.text
    for pid in hidden:
        _o311_error(o.get(f"/open311/v2/requests/{pid}.json"), 404, "not_found")
    _o311_error(o.get("/open311/v2/requests.json", params={"service_code": "report"}), 403, "service_not_public")
    assert not hidden & set(_ids(o.get("/open311/v2/requests.json",
                                       params={"service_request_id": ",".join([*hidden, complaint["id"]])})))

    # A key with open311:read_full reads the full rows, as a parameter or a header.
    full_key = _key(w, "open311:read_full")["key"]
    by_param = o.get("/open311/v2/requests.json", params={"page_size": 200, "api_key": full_key})
    assert hidden | {complaint["id"]} <= set(_ids(by_param))
    [raw] = [x for x in by_param.json() if x["service_request_id"] == complaint["id"]]
    assert raw["description"] == TITLE[:200] and (raw["lat"], raw["long"]) == (LAT, LON)
    assert raw["agency_responsible"] == w.home_unit["name"] and raw["address"] == "示范市幸福路 1 号 3 栋 502"
    by_header = o.get(f"/open311/v2/requests/{report['id']}.json", headers={"X-API-Key": full_key})
    assert _ids(by_header) == [report["id"]]
    assert by_header.json()[0]["description"] == f"举报 {PHONE} 违规经营"

    # A key without the scope, an unknown or a revoked key: refused, never the public view.
    writer = _key(w, "open311:write")
    _o311_error(o.get("/open311/v2/requests.json", params={"api_key": writer["key"]}), 403, "api_key_scope_missing")
    _o311_error(o.get("/open311/v2/requests.json", params={"api_key": "o311_" + "x" * 43}), 403, "invalid_api_key")
    bad_xml = o.get("/open311/v2/requests.xml", params={"api_key": "wrong"})
    assert bad_xml.status_code == 403 and ET.fromstring(bad_xml.content).find("error/error_code").text == \
        "invalid_api_key"
    # The write scope posts (as the configured keys do); a read-only key does not.
    form = {"service_code": "help", "lat": "23.1", "long": "113.2", "description": "路灯不亮"}
    assert o.post("/open311/v2/requests.json", data={**form, "api_key": writer["key"]}).status_code == 201
    assert o.post("/open311/v2/requests.json", data={**form, "api_key": LEGACY_KEY}).status_code == 201
    _o311_error(o.post("/open311/v2/requests.json", data={**form, "api_key": full_key}), 403, "invalid_api_key")
    full_id = next(k["id"] for k in w.ops.get("/v1/open311/keys").json()["items"] if full_key.startswith(k["prefix"])
                   and "open311:read_full" in k["scopes"] and k["revoked_at"] is None)
    assert w.ops.delete(f"/v1/open311/keys/{full_id}").status_code == 200
    _o311_error(o.get("/open311/v2/requests.json", params={"api_key": full_key}), 403, "invalid_api_key")


def test_open311_list_is_paged_and_rate_limited(world):
    w = world
    made = [_intake(w, category="suggestion", title=f"增设公交站点 {n}", contact=None)["id"] for n in range(7)]
    o = w.public()
    seen, cursor, pages = [], None, 0
    while True:
        r = o.get("/open311/v2/requests.json", params={"service_code": "suggestion", "page_size": 3,
                                                       **({"cursor": cursor} if cursor else {})})
        seen += _ids(r)
        pages += 1
        cursor = r.headers.get("X-Next-Cursor")
        if not cursor:
            assert "Link" not in r.headers
            break
        assert r.headers["Link"].endswith('rel="next"') and f"cursor={cursor}" in r.headers["Link"]
        assert len(r.json()) == 3
    assert seen == sorted(made, reverse=True) and pages == 3  # newest first, each once
    for bad, code in ((("page_size", "0"), "invalid_page_size"), (("page_size", "201"), "invalid_page_size"),
                      (("page_size", "ten"), "invalid_page_size"), (("cursor", "not-a-cursor"), "invalid_cursor"),
                      (("service_request_id", ",".join(["a" * 24] * 201)), "too_many_ids")):
        _o311_error(o.get("/open311/v2/requests.json", params=dict([bad])), 400, code)
    # dates at the ends of the calendar were a 500 (the 90-day span overflowed)
    edges = w.public()
    for dates in ({"start_date": "9999-12-31T00:00:00Z"}, {"end_date": "0001-01-01T00:00:00Z"},
                  {"start_date": "0001-01-01T00:00:00+14:00", "end_date": "0001-01-02T00:00:00Z"}):
        r = edges.get("/open311/v2/requests.json", params=dates)
        assert r.status_code == 400 and "2000" in r.json()[0]["description"], (dates, r.text)

    # Per client address: READ_RATE at once (the refusals above counted), then 429 with Retry-After.
    flood = w.public()
    answers = []
    while 429 not in answers and len(answers) <= READ_RATE + 5:
        answers.append(flood.get("/open311/v2/requests.json", params={"page_size": 1}).status_code)
    assert answers[-1] == 429 and set(answers[:-1]) == {200} and READ_RATE - 1 <= len(answers) - 1 <= READ_RATE + 1
    limited = flood.get(f"/open311/v2/requests/{made[0]}.json")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert limited.json()[0]["error_code"] == "rate_limited"
    # Another address, and a keyed client at the same address, are not held back.
    assert w.public().get("/open311/v2/requests.json").status_code == 200
    key = _key(w, "open311:read_full")["key"]
    assert flood.get("/open311/v2/requests.json", headers={"X-API-Key": key}).status_code == 200


async def test_open311_page_is_one_query_whatever_its_size(world):
    """The page the handler serves (open311.fetch_page) costs one statement, full rows with their
    agency included (an outer join, not a query per row), read here against the service's own
    database with a statement counter."""
    from types import SimpleNamespace

    from sqlalchemy import event

    from govmedia_kit.db import Database
    from services.petition import open311
    from services.petition.models import Petition

    w = world
    made = [_intake(w, category="help", title=f"路灯不亮 {n}", contact=None)["id"] for n in range(12)]
    _answer(w, made[0])  # one with an agency
    pg = w.stack._pg_urls.get("petition")  # type: ignore[attr-defined]
    url = pg or f"sqlite+aiosqlite:///{w.stack.data_dir / 'petition.db'}"
    db = Database(url)
    statements: list[str] = []

    def count(conn, cursor, sql, *args):
        if sql.lstrip().upper().startswith("SELECT"):  # (not SQLite's BEGIN)
            statements.append(sql)
    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        rt = SimpleNamespace(db=db)
        for full in (True, False):
            for size in (1, 5, 12):
                statements.clear()
                page = await open311.fetch_page(rt, open311._query(full).where(Petition.id.in_(made)), size, full)
                assert len(page.items) == size and len(statements) == 1, (full, size, statements)
        statements.clear()
        page = await open311.fetch_page(rt, open311._query(True).where(Petition.id == made[0]), 5, True)
        assert page.items[0]["agency_responsible"] == w.home_unit["name"] and len(statements) == 1
    finally:
        await db.engine.dispose()


# --- Open311 keys: made, listed, revoked, audited; REST, gRPC, who may -----------------------

def test_open311_keys_are_shown_once_stored_hashed_and_audited(world):
    w = world
    before = w.ops.get("/v1/open311/keys").json()["items"]
    r = w.ops.post("/v1/open311/keys", json={"name": "省大数据局地图", "scopes": ["open311:read_full", "open311:write"]})
    assert r.status_code == 201 and r.headers["Cache-Control"] == "no-store", r.text
    made = r.json()
    key = made["key"]
    assert key.startswith("o311_") and len(key) >= 40 and made["prefix"] == key[:12]
    assert made["scopes"] == ["open311:read_full", "open311:write"] and made["revoked_at"] is None
    listed = w.ops.get("/v1/open311/keys").json()["items"]
    assert [k["id"] for k in listed] == [k["id"] for k in before] + [made["id"]]
    assert key not in str(listed) and all(k["key"] is None for k in listed)
    rows = _db(w, f"SELECT key_hash, name, prefix, scopes FROM petition_open311_keys WHERE id = '{made['id']}'")
    assert rows == [(hashlib.sha256(key.encode()).hexdigest(), "省大数据局地图", key[:12],
                     "open311:read_full open311:write")]

    # Bad input: a clear code, nothing stored.
    for body in ({"name": "", "scopes": ["open311:read_full"]}, {"name": "x", "scopes": []},
                 {"name": "x", "scopes": ["admin"]}, {"name": "a\x07b", "scopes": ["open311:write"]},
                 {"name": "x", "scopes": ["open311:write"], "expires": "never"}, {"scopes": ["open311:write"]}):
        assert_error(w.ops.post("/v1/open311/keys", json=body), 422, "validation_failed")
    assert len(w.ops.get("/v1/open311/keys").json()["items"]) == len(listed)
    assert_error(w.ops.delete("/v1/open311/keys/nope"), 404, "open311_key_not_found")

    revoked = w.ops.delete(f"/v1/open311/keys/{made['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] and revoked.json()["key"] is None
    assert_error(w.ops.delete(f"/v1/open311/keys/{made['id']}"), 409, "open311_key_revoked")
    audit = w.ops.get("/v1/open311/keys/audit").json()
    mine = [e for e in audit["items"] if (e["after"] or {}).get("id") == made["id"]]
    assert [(e["action"], e["after"]["revoked"]) for e in mine] == [("key_created", False), ("key_revoked", True)]
    assert audit["ok"] is True and key not in str(audit)


async def test_open311_keys_over_grpc(world):
    w = world
    ops = (("authorization", f"Bearer {login(w.stack, 'ops')}"),)
    handler = (("authorization", f"Bearer {login(w.stack, 'handler')}"),)
    async with grpc.aio.insecure_channel(w.stack.services["petition"].grpc_target) as channel:
        stub = pb_grpc.PetitionServiceStub(channel)
        made = await stub.CreateOpen311Key(pb.CreateOpen311KeyRequest(name="gRPC 客户端", scopes=["open311:read_full"]),
                                           metadata=ops)
        assert made.key.startswith("o311_") and list(made.scopes) == ["open311:read_full"]
        listed = await stub.ListOpen311Keys(pb.ListOpen311KeysRequest(), metadata=ops)
        assert made.id in [k.id for k in listed.items] and all(k.key == "" for k in listed.items)
        # The key works on Open311 at once, and stops when revoked.
        assert w.public().get("/open311/v2/requests.json", params={"api_key": made.key}).status_code == 200
        revoked = await stub.RevokeOpen311Key(pb.RevokeOpen311KeyRequest(id=made.id), metadata=ops)
        assert revoked.revoked_at and revoked.key == ""
        assert w.public().get("/open311/v2/requests.json", params={"api_key": made.key}).status_code == 403
        for call, request, metadata, status, code in (
            (stub.CreateOpen311Key, pb.CreateOpen311KeyRequest(name="x", scopes=["root"]), ops,
             grpc.StatusCode.INVALID_ARGUMENT, "validation_failed"),
            (stub.CreateOpen311Key, pb.CreateOpen311KeyRequest(name="x", scopes=["open311:write"]), handler,
             grpc.StatusCode.PERMISSION_DENIED, "role_required"),
            (stub.ListOpen311Keys, pb.ListOpen311KeysRequest(), (), grpc.StatusCode.UNAUTHENTICATED, "unauthenticated"),
            (stub.RevokeOpen311Key, pb.RevokeOpen311KeyRequest(id=made.id), ops, grpc.StatusCode.FAILED_PRECONDITION,
             "open311_key_revoked"),
            (stub.RevokeOpen311Key, pb.RevokeOpen311KeyRequest(id="nope"), ops, grpc.StatusCode.NOT_FOUND,
             "open311_key_not_found"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=metadata)
            assert err.value.code() == status
            assert dict(err.value.trailing_metadata() or ())["error-code"] == code


def test_open311_key_endpoints_authorisation_matrix(world):
    """Every role, at the province level and in a city, and no token, against every key endpoint:
    only province-level ops pass (a city's ops: `province_only`, everyone else `role_required`)."""
    w = world
    account_ops = httpx.Client(base_url=w.stack.services["account"].base_url, verify=TLS, timeout=15,
                               headers=auth(login(w.stack, "ops")))
    city = account_ops.post("/v1/regions", json={"name": "矩阵市", "parent_id": w.home_unit["region_id"],
                                                 "level": "city"}).json()
    city_unit = account_ops.post("/v1/units", json={"name": "矩阵市政府办", "region_id": city["id"]}).json()
    target = _key(w, "open311:write", name="矩阵")["id"]
    endpoints = [("POST", "/v1/open311/keys", {"name": "m", "scopes": ["open311:write"]}),
                 ("GET", "/v1/open311/keys", None), ("GET", "/v1/open311/keys/audit", None),
                 ("DELETE", "/v1/open311/keys/{id}", None)]
    served = {(m, r.path) for r in _petition_routes() for m in r.methods if r.path.startswith("/v1/open311/")}
    assert served == {(m, p.replace("{id}", "{key_id}")) for m, p, _ in endpoints}
    callers = {"anonymous": w.public()}
    for where, unit_id in (("province", w.home_unit["id"]), ("city", city_unit["id"])):
        for role in ROLES:
            name = f"m-{where}-{role}".replace("_", "-")
            r = account_ops.post("/v1/users", json={"username": name, "password": PASSWORD, "unit_id": unit_id,
                                                    "roles": [role]})
            assert r.status_code == 201, r.text
            callers[f"{where}/{role}"] = w.as_user(name, PASSWORD)
    for who, c in callers.items():
        for method, path, body in endpoints:
            if method == "DELETE" and who == "province/ops":
                continue  # revoking is checked last, once
            r = c.request(method, path.replace("{id}", target), json=body)
            if who == "anonymous":
                assert_error(r, 401, "unauthenticated")
            elif who == "province/ops":
                assert r.status_code in (200, 201), (who, method, path, r.text)
            else:
                assert_error(r, 403, "province_only" if who == "city/ops" else "role_required")
    assert callers["province/ops"].delete(f"/v1/open311/keys/{target}").status_code == 200


def _petition_routes():
    from services.petition.service import build_spec

    return [r for router in build_spec().routers for r in router.routes]


# --- linking is never told to the citizen -------------------------------------------------

async def test_the_citizen_is_never_told_of_linking(world):
    w = world
    phone = "13900002222"
    first = _intake(w, title="楼道堆放杂物", contact={"name": "李四", "phone": phone})
    again = _intake(w, title="楼道堆放杂物！", contact={"name": "李四", "phone": phone})
    staff = w.handler.get(f"/v1/petitions/{again['id']}").json()
    assert staff["status"] == "linked" and staff["duplicate_of"] == first["id"]  # staff see it

    # The receipt: as any other (no duplicate_of, received, the clock running).
    assert set(again) == set(first) and "duplicate_of" not in again
    assert again["status"] == first["status"] == "received"
    assert again["sla"]["running"] is True and again["sla"]["time_left_s"] > 0
    assert {k: v for k, v in again["sla"].items() if k != "time_left_s"} == \
        {k: v for k, v in first["sla"].items() if k != "time_left_s"}

    # The tracking view and its refusals: the same as the first case's.
    citizen = w.public()
    views = [citizen.get(f"/v1/petitions/track/{r['tracking_code']}").json() for r in (first, again)]
    def strip(view):
        return {k: x for k, x in view.items() if k not in ("tracking_code", "created_at", "sla", "timeline")}
    assert strip(views[1]) == strip(views[0]) and views[1]["status"] == "received"
    assert [e["action"] for e in views[1]["timeline"]] == [e["action"] for e in views[0]["timeline"]] == ["received"]
    refusals = [citizen.post(f"/v1/petitions/track/{r['tracking_code']}/rate", json={"rating": 5}).json()
                for r in (first, again)]
    assert refusals[1] == refusals[0] and refusals[1]["error"]["details"]["status"] == "received"

    # gRPC: the receipt and the tracking view alike.
    async with grpc.aio.insecure_channel(w.stack.services["petition"].grpc_target) as channel:
        stub = pb_grpc.PetitionServiceStub(channel)
        receipt = await stub.CreatePetition(pb.CreatePetitionRequest(
            category="complaint", title="楼道堆放杂物", content="仍未清理。", channel="app",
            contact=pb.Contact(name="李四", phone=phone)))
        assert receipt.status == "received" and receipt.duplicate_of == "" and receipt.sla.running
        tracked = await stub.Track(pb.TrackRequest(tracking_code=receipt.tracking_code))
        assert tracked.status == "received" and tracked.sla.running
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CitizenAct(pb.CitizenActRequest(tracking_code=receipt.tracking_code, action="rate", rating=5))
        assert "linked" not in (err.value.details() or "")
    assert w.handler.get(f"/v1/petitions/{receipt.id}").json()["status"] == "linked"

    # Open311: the notice on posting, and both views, say nothing of it either.
    form = {"service_code": "complaint", "lat": "23.1", "long": "113.2", "description": "楼道堆放杂物",
            "last_name": "李", "first_name": "四", "phone": phone, "api_key": LEGACY_KEY}
    posted = w.public().post("/open311/v2/requests.json", data=form)
    assert posted.status_code == 201, posted.text
    [created] = posted.json()
    assert created["service_notice"].startswith("已登记") and "并入" not in created["service_notice"]
    assert w.handler.get(f"/v1/petitions/{created['service_request_id']}").json()["status"] == "linked"
    full_key = _key(w, "open311:read_full")["key"]
    for params in ({}, {"api_key": full_key}):
        [o] = w.public().get(f"/open311/v2/requests/{created['service_request_id']}.json", params=params).json()
        assert o["status"] == "open" and o["status_notes"] is None and o["expected_datetime"], o


# --- tracking codes stay out of telemetry ---------------------------------------------------

async def test_tracking_codes_stay_out_of_spans_logs_and_metrics(world):
    w = world
    receipt = _intake(w, category="consultation", title="社保卡补办", contact=None)
    code = receipt["tracking_code"]
    citizen = w.public()
    assert citizen.get(f"/v1/petitions/track/{code}").status_code == 200
    assert citizen.get(f"/v1/petitions/track/{code.lower()}", params={"code": code}).status_code == 200
    assert citizen.post(f"/v1/petitions/track/{code}/rate", json={"rating": 5}).status_code == 409
    assert citizen.get(f"/open311/v2/tokens/{code}.json").status_code == 200
    assert citizen.get(f"/open311/v2/tokens/{code}.xml").status_code == 200
    async with grpc.aio.insecure_channel(w.stack.services["petition"].grpc_target) as channel:
        stub = pb_grpc.PetitionServiceStub(channel)
        assert (await stub.Track(pb.TrackRequest(tracking_code=code))).status == "received"
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CitizenAct(pb.CitizenActRequest(tracking_code=code, action="rate", rating=5))

    def exported():
        spans = [s for s in w.otlp.spans if s.service == "govmedia-petition"]
        names = {s.name for s in spans}
        wanted = {"GET /v1/petitions/track/{tracking_code}", "POST /v1/petitions/track/{tracking_code}/{action}",
                  "GET /open311/v2/tokens/{token}.{fmt}", "/govmedia.petition.v1.PetitionService/Track",
                  "/govmedia.petition.v1.PetitionService/CitizenAct"}
        assert wanted <= names, sorted(names)
        return spans
    spans = eventually(exported, timeout=30)
    secrets = (code, code.lower())
    for span in spans:
        for text in (span.name, *(f"{k}={v}" for k, v in span.attributes)):
            assert not any(s in text for s in secrets), (span.name, text)
    track_span = next(s for s in spans if s.name == "GET /v1/petitions/track/{tracking_code}")
    assert track_span.attribute("http.target") == "/v1/petitions/track/{tracking_code}"

    metrics = httpx.get(f"{w.stack.services['petition'].base_url}/metrics", verify=TLS).text
    assert 'route="/v1/petitions/track/{tracking_code}"' in metrics
    assert not any(s in metrics for s in secrets)
    log = w.stack.services["petition"].log_path.read_text()
    assert not any(s in log for s in secrets)


def _db(w: World, sql: str) -> list:
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, service_db(w.stack, "petition", sql)).result()

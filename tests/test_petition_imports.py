"""Cases that are not citizens typing, through authenticated imports only: hotline (12345) work
orders by the provincial intake desk or ops, comments from a unit's accounts by its client
credentials or its handler (that unit's accounts only); each idempotent on its source's id;
the public intake refuses those channels. REST and gRPC, real processes, both databases."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta, timezone

import grpc
import httpx
import pytest

from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia.petition.v1 import petition_import_pb2 as import_pb
from govmedia.petition.v1 import petition_import_pb2_grpc as import_grpc
from govmedia_kit import workdays
from services.petition import sla
from services.petition.domain import local_iso
from tests.helpers import assert_error, client, client_token, eventually, login, service_db

PASSWORD = "imports-pass-2026"
CALLER = {"name": "赵六", "phone": "13700001234"}
HOTLINE = {"work_order_no": "GD12345-20261123-0001", "category": "complaint", "title": "噪音扰民",
           "content": "夜间施工。", "contact": CALLER, "location": "示范市幸福路 1 号"}


def register(ops: httpx.Client, unit: dict, handle: str, delivery: dict, platform: str) -> dict:
    """An account of the unit in the ledger (several per platform, under a recorded exception)."""
    unit_id = unit["id"]
    exc = ops.post(f"/v1/units/{unit_id}/platform-exceptions", json={"platform": platform, "reason": "测试"})
    assert exc.status_code == 201 or exc.json()["error"]["code"] == "exception_exists", exc.text
    r = ops.post("/v1/accounts", json={
        "unit_id": unit_id, "platform": platform, "name": f"{unit['name']}{handle}", "handle": handle, "opened_on": "2025-01-01",
        "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}, "delivery": delivery})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def world(calendar_file, stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "petition"))
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]
    region = ops.post("/v1/regions", json={"name": "乙市", "parent_id": home["region_id"], "level": "city"}).json()
    city = ops.post("/v1/units", json={"name": "乙市政府办", "region_id": region["id"]}).json()
    r = ops.post("/v1/users", json={"username": "handler-b", "password": PASSWORD, "unit_id": city["id"],
                                    "roles": ["handler"]})
    assert r.status_code == 201, r.text
    app = register(ops, home, "app", {"mode": "stream"}, "app")
    weibo = register(ops, home, "weibo", {"mode": "webhook", "url": "http://127.0.0.1:9/hook",
                                                "secret": "a-secret-of-16-chars-or-more"}, "weibo")
    city_app = register(ops, city, "city-app", {"mode": "stream"}, "app")
    people = {n: client(stack, "petition", login(stack, n)) for n in ("handler", "ops", "editor", "supervisor")}
    people["handler-b"] = client(stack, "petition", login(stack, "handler-b", PASSWORD))
    people["app"] = client(stack, "petition", client_token(stack, app))
    people["city-app"] = client(stack, "petition", client_token(stack, city_app))
    people["public"] = client(stack, "petition")
    accounts = {"app": app, "weibo": weibo, "city-app": city_app}
    return stack, {"home": home["id"], "city": city["id"]}, accounts, people


def _count(stack) -> int:
    return asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM petitions"))[0][0]


def _before_rest_day(earliest: int, latest: int) -> date:
    """A working day followed by a rest day (a Friday, or the eve of a holiday), between
    `latest` and `earliest` days ago, from the calendar the services read too."""
    cal = workdays.default_calendar()
    today = workdays.local_date(datetime.now(timezone.utc))
    for back in range(latest, earliest + 1):
        day = today - timedelta(days=back)
        if cal.is_workday(day) and not cal.is_workday(day + timedelta(days=1)):
            return day
    raise AssertionError("no working day before a rest day in that range")


def _expected(received: datetime, policy: dict) -> sla.Deadline:
    """The deadline by the service's own arithmetic, in this process, from the hotline's receipt."""
    stage = "acceptance" if policy["acceptance_days"] else "handling"
    period = sla.Period(policy[f"{stage}_days"], policy[f"{stage}_unit"])
    return sla.compute(workdays.default_calendar(), received, period, warn_share=policy["warn_share"])


def _policy(people: httpx.Client, category: str) -> dict:
    r = people.get("/v1/sla/policies", params={"category": category})
    assert r.status_code == 200, r.text
    return r.json()["items"][0]


def test_public_intake_hotline_and_comment_imports(world):
    stack, units, accounts, who = world
    public, desk = who["public"], who["handler"]

    # The public door takes the web form and the app only: nobody there can pass for the hotline.
    body = {k: v for k, v in HOTLINE.items() if k != "work_order_no"}
    assert_error(public.post("/v1/petitions", json={**HOTLINE, "channel": "hotline"}), 422, "validation_failed")
    for channel in ("hotline", "comment", "wechat", "weibo", "email", "open311"):
        answer = assert_error(public.post("/v1/petitions", json={**body, "channel": channel}), 422,
                              "channel_not_public")
        assert answer["error"]["details"]["allowed"] == ["web", "app"]
    assert _count(stack) == 0

    # Hotline transfers: the provincial intake desk or ops; not a city handler, a client or an editor.
    url = "/v1/petitions/imports/hotline"
    assert_error(who["editor"].post(url, json=HOTLINE), 403, "role_required")
    assert_error(who["supervisor"].post(url, json=HOTLINE), 403, "role_required")
    assert_error(who["handler-b"].post(url, json=HOTLINE), 403, "not_intake_desk")
    assert_error(who["app"].post(url, json=HOTLINE), 403, "client_not_allowed")
    assert_error(public.post(url, json=HOTLINE), 401, "unauthenticated")
    assert_error(desk.post(url, json={**HOTLINE, "work_order_no": "bad number!"}), 422, "validation_failed")
    assert_error(desk.post(url, json={**HOTLINE, "contact": None}), 422, "contact_required")
    assert _count(stack) == 0
    first = desk.post(url, json=HOTLINE)
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["created"] is True and made["channel"] == "hotline" and len(made["tracking_code"]) == 12
    assert made["source_ref"] == "hotline:GD12345-20261123-0001" and made["sla"]["policy"] == "gd12345.complaint.15wd"
    # The same work order again (from ops, too): one case, answered with it.
    for again in (desk.post(url, json=HOTLINE), who["ops"].post(url, json=HOTLINE)):
        assert again.status_code == 200, again.text
        assert again.json() == {**made, "created": False, "sla": again.json()["sla"]}
    # The same number saying something else is not the same work order: refused, nothing changed.
    conflict = assert_error(who["ops"].post(url, json={**HOTLINE, "title": "改了标题"}), 409, "import_conflict")
    assert conflict["error"]["details"]["petition_id"] == made["id"]
    assert _count(stack) == 1
    case = desk.get(f"/v1/petitions/{made['id']}").json()
    assert case["channel"] == "hotline" and case["contact"] == CALLER and case["title"] == "噪音扰民"
    assert case["source_ref"] == made["source_ref"] and set(case["actions"]) == {"accept", "decline"}
    # Without `received_at` the hotline received it now: its receipt, then the import.
    received, imported = desk.get(f"/v1/petitions/{made['id']}/timeline").json()["items"]
    assert received["action"] == "received" and "GD12345-20261123-0001" in received["note"]
    assert received["actor"] == "hotline" and received["at"] == made["created_at"]
    assert imported["action"] == "imported" and "GD12345-20261123-0001" in imported["note"]
    assert imported["actor"] not in ("citizen", "hotline")
    assert public.get(f"/v1/petitions/track/{made['tracking_code']}").json()["status"] == "received"

    # Comments: the unit's client credentials or its handler, for accounts of that unit only.
    url = "/v1/petitions/imports/comments"
    comment = {"account_id": accounts["weibo"]["id"], "comment_id": "4963210987654321", "category": "consultation",
               "content": "请问新生儿医保在哪里办理？需要带哪些材料？谢谢"}

    def known():  # the petition service learns accounts from the account service's events
        r = desk.post(url, json={**comment, "comment_id": "probe"})
        return r.status_code != 404 and r
    probe = eventually(known)
    assert probe.status_code == 201, probe.text
    assert_error(who["editor"].post(url, json=comment), 403, "role_required")
    assert_error(who["handler-b"].post(url, json=comment), 403, "other_unit")
    assert_error(who["city-app"].post(url, json=comment), 403, "other_unit")
    assert_error(desk.post(url, json={**comment, "account_id": "nope"}), 404, "account_not_found")
    assert_error(desk.post(url, json={**comment, "comment_id": "has space"}), 422, "validation_failed")
    assert_error(desk.post(url, json={**comment, "channel": "hotline"}), 422, "validation_failed")
    by_app = who["app"].post(url, json=comment)
    assert by_app.status_code == 201, by_app.text
    got = by_app.json()
    assert got["channel"] == "comment" and got["created"] is True
    assert got["source_ref"] == f"comment:{accounts['weibo']['id']}:4963210987654321"
    again = desk.post(url, json=comment)  # the handler imports the same comment: that case
    assert again.status_code == 200 and again.json()["id"] == got["id"] and again.json()["created"] is False
    case = desk.get(f"/v1/petitions/{got['id']}").json()
    assert case["title"] == "请问新生儿医保在哪里办理？需要带哪些材料？谢谢" and case["desk_unit_id"] == units["home"]
    assert case["source_account_id"] == accounts["weibo"]["id"] and set(case["actions"]) == {"accept", "decline"}
    note = desk.get(f"/v1/petitions/{got['id']}/timeline").json()["items"][0]["note"]
    assert "weibo”" in note and "微博" in note and "4963210987654321" in note
    # The city's own app imports the comments of the city's accounts; its desk is the city unit.
    city_case = who["city-app"].post(url, json={**comment, "account_id": accounts["city-app"]["id"],
                                                "title": "城市客户端留言"})
    assert city_case.status_code == 201, city_case.text
    seen = who["handler-b"].get(f"/v1/petitions/{city_case.json()['id']}").json()
    assert seen["desk_unit_id"] == units["city"] and "accept" in seen["actions"]
    assert _count(stack) == 4

    # Sealed at rest and never logged.
    rows = asyncio.run(service_db(stack, "petition", f"SELECT * FROM petitions WHERE id = '{made['id']}'"))
    assert "13700001234" not in str(rows) and "赵六" not in str(rows)
    log = stack.services["petition"].log_path.read_text()
    assert "13700001234" not in log and "赵六" not in log


async def test_imports_over_grpc(world):
    stack, units, accounts, who = world
    md = lambda token: (("authorization", f"Bearer {token}"),)  # noqa: E731
    desk_token = login(stack, "handler")
    desk, city = md(desk_token), md(login(stack, "handler-b", PASSWORD))
    app = md(client_token(stack, accounts["app"]))
    async with grpc.aio.insecure_channel(stack.services["petition"].grpc_target) as channel:
        stub = import_grpc.PetitionImportServiceStub(channel)
        request = import_pb.ImportHotlineRequest(work_order_no="GD-0002", category="help", title="路灯不亮",
                                                 content="幸福路路灯坏了", location="幸福路")
        made = await stub.ImportHotline(request, metadata=desk)
        assert made.created and made.channel == "hotline" and made.source_ref == "hotline:GD-0002" and made.due_at
        again = await stub.ImportHotline(request, metadata=desk)
        assert again.id == made.id and not again.created and again.tracking_code == made.tracking_code
        for metadata, call, code in ((city, stub.ImportHotline, "not_intake_desk"),
                                     (app, stub.ImportHotline, "client_not_allowed")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert dict(err.value.trailing_metadata())["error-code"] == code
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ImportHotline(import_pb.ImportHotlineRequest(work_order_no="GD-0003", category="gossip",
                                                                    title="t", content="c"), metadata=desk)
        assert dict(err.value.trailing_metadata())["error-code"] == "validation_failed"
        # The same number with other content: refused, the case named.
        changed = import_pb.ImportHotlineRequest(work_order_no="GD-0002", category="help", title="路灯不亮",
                                                 content="幸福路路灯全坏了", location="幸福路")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ImportHotline(changed, metadata=desk)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dict(err.value.trailing_metadata())["error-code"] == "import_conflict"
        assert made.id in err.value.details()

        # When the hotline took the call (UTC spelled `Z`): the clock starts then.
        day = _before_rest_day(14, 2)
        received = datetime.combine(day, time(16, 45), workdays.SHANGHAI).astimezone(timezone.utc)
        spelled = received.strftime("%Y-%m-%dT%H:%M:%SZ")
        early = await stub.ImportHotline(import_pb.ImportHotlineRequest(
            work_order_no="GD-0004", category="help", title="井盖缺失", content="人民路井盖缺失", received_at=spelled),
            metadata=desk)
        policy = _policy(client(stack, "petition", desk_token), "help")
        assert early.created and early.created_at == local_iso(received)
        assert early.due_at == local_iso(_expected(received, policy).due_at)
        for bad, code in (((datetime.now(timezone.utc) + timedelta(hours=1)).isoformat(), "received_at_in_future"),
                          ((datetime.now(timezone.utc) - timedelta(days=40)).isoformat(), "received_at_too_old"),
                          ("2026-11-23 09:30", "invalid_received_at"), ("next monday", "invalid_received_at")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ImportHotline(import_pb.ImportHotlineRequest(
                    work_order_no="GD-0005", category="help", title="t", content="c", received_at=bad), metadata=desk)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert dict(err.value.trailing_metadata())["error-code"] == code, bad

        comment = import_pb.ImportCommentRequest(account_id=accounts["app"]["id"], comment_id="c-1",
                                                 category="suggestion", content="建议延长办事大厅周末开放时间")

        async def first_comment():
            for _ in range(200):
                try:
                    return await stub.ImportComment(comment, metadata=app)
                except grpc.aio.AioRpcError as exc:
                    assert dict(exc.trailing_metadata())["error-code"] == "account_not_found"
                    await asyncio.sleep(0.1)
        got = await first_comment()
        assert got.created and got.channel == "comment" and got.status == "received"
        assert (await stub.ImportComment(comment, metadata=desk)).id == got.id
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ImportComment(comment, metadata=city)
        assert dict(err.value.trailing_metadata())["error-code"] == "other_unit"

        public = pb_grpc.PetitionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await public.CreatePetition(pb.CreatePetitionRequest(category="help", title="t", content="c",
                                                                 channel="hotline"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert dict(err.value.trailing_metadata())["error-code"] == "channel_not_public"
    assert (await service_db(stack, "petition", "SELECT count(*) FROM petitions"))[0][0] == 3


def test_hotline_received_at_starts_the_clock(world):
    """A work order received on the eve of a rest day, a week or more ago: the SLA counts from
    the hotline's receipt (the day of receipt not counted, rest days skipped), computed here by
    the service's own functions; the timeline has the receipt and then the import."""
    stack, _units, _accounts, who = world
    desk, url = who["handler"], "/v1/petitions/imports/hotline"
    day = _before_rest_day(25, 7)
    received = datetime.combine(day, time(10, 30), workdays.SHANGHAI)
    for category, number in (("consultation", "GD-A-1"), ("complaint", "GD-A-2"), ("petition", "GD-A-3")):
        policy = _policy(desk, category)
        expected = _expected(received.astimezone(timezone.utc), policy)
        # Across the rest day: the last day lies further off than the period's own days.
        if policy["handling_unit"] == sla.WORKDAYS and not policy["acceptance_days"]:
            assert (expected.last_day - day).days > expected.period.days
        body = {**HOTLINE, "work_order_no": number, "category": category, "received_at": received.isoformat()}
        r = desk.post(url, json=body)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["created_at"] == local_iso(received)
        assert made["sla"]["due_at"] == local_iso(expected.due_at), (category, made["sla"])
        assert made["sla"]["warn_at"] == local_iso(expected.warn_at)
        # Not the clock of an import received now.
        assert made["sla"]["due_at"] != local_iso(sla.compute(
            workdays.default_calendar(), datetime.now(timezone.utc), expected.period,
            warn_share=policy["warn_share"]).due_at)
        case = desk.get(f"/v1/petitions/{made['id']}").json()
        assert case["sla"]["due_at"] == made["sla"]["due_at"] and case["created_at"] == made["created_at"]
        received_step, imported_step = desk.get(f"/v1/petitions/{made['id']}/timeline").json()["items"][:2]
        assert (received_step["action"], received_step["actor"], received_step["at"]) == \
            ("received", "hotline", local_iso(received))
        assert imported_step["action"] == "imported" and number in imported_step["note"]
        assert imported_step["at"] > received_step["at"]
        tracked = who["public"].get(f"/v1/petitions/track/{made['tracking_code']}").json()
        assert [s["action"] for s in tracked["timeline"][:2]] == ["received", "imported"]
        # Imported again, the same work order without `received_at` (a retry): that case, unchanged.
        again = desk.post(url, json={k: v for k, v in body.items() if k != "received_at"})
        assert again.status_code == 200 and again.json()["id"] == made["id"] and again.json()["created"] is False
        assert again.json()["sla"]["due_at"] == made["sla"]["due_at"]
    # An offset other than +08:00 is the same moment.
    body = {**HOTLINE, "work_order_no": "GD-A-4", "category": "consultation",
            "received_at": received.astimezone(timezone(timedelta(hours=-5))).isoformat()}
    r = desk.post(url, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["created_at"] == local_iso(received)
    # A clock a few seconds ahead of ours (within the minute allowed) is taken as now.
    ahead = (datetime.now(timezone.utc) + timedelta(seconds=20)).isoformat()
    r = desk.post(url, json={**HOTLINE, "work_order_no": "GD-A-5", "received_at": ahead})
    assert r.status_code == 201, r.text
    assert _count(stack) == 5


def test_hotline_received_at_refusals(world):
    """Stable codes, nothing stored: in the future, older than the bound (30 days), unparsable
    or without an offset."""
    stack, _units, _accounts, who = world
    desk, url = who["handler"], "/v1/petitions/imports/hotline"
    now = datetime.now(timezone.utc)
    cases = [
        ((now + timedelta(minutes=10)).isoformat(), 422, "received_at_in_future"),
        ((now + timedelta(days=2)).astimezone(workdays.SHANGHAI).isoformat(), 422, "received_at_in_future"),
        ((now - timedelta(days=31)).isoformat(), 422, "received_at_too_old"),
        ("2019-05-01T09:00:00+08:00", 422, "received_at_too_old"),
        ("yesterday", 422, "invalid_received_at"),
        ("", 422, "invalid_received_at"),
        ("2026-13-01T09:00:00+08:00", 422, "invalid_received_at"),
        ("2026-11-23T09:30:00", 422, "invalid_received_at"),      # no offset: which 09:30?
        (now.date().isoformat(), 422, "invalid_received_at"),     # a day, not a moment
        ("0001-01-01T00:00:00+08:00", 422, "invalid_received_at"),
        ("2026-11-23T09:30:00+08:00" + "0" * 100, 422, "invalid_received_at"),
    ]
    for raw, status, code in cases:
        answer = assert_error(desk.post(url, json={**HOTLINE, "received_at": raw}), status, code)
        assert answer["error"]["details"]["field"] == "received_at", raw
    too_old = assert_error(desk.post(url, json={**HOTLINE, "received_at": cases[2][0]}), 422, "received_at_too_old")
    assert too_old["error"]["details"]["max_age_days"] == 30
    assert_error(desk.post(url, json={**HOTLINE, "received_at": 1732345200}), 422, "validation_failed")
    assert _count(stack) == 0
    assert asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM petition_timeline"))[0][0] == 0
    # The refusal comes before the work order is looked at: a known work order is refused too.
    assert desk.post(url, json=HOTLINE).status_code == 201
    assert_error(desk.post(url, json={**HOTLINE, "received_at": cases[0][0]}), 422, "received_at_in_future")
    assert _count(stack) == 1


def test_reimport_with_other_content_is_a_conflict(world):
    """The same work order number (or comment) with another category, title, content or contact:
    `409 import_conflict` naming the case, nothing changed; the identical one: 200, that case."""
    stack, _units, accounts, who = world
    desk, url = who["handler"], "/v1/petitions/imports/hotline"
    body = {**HOTLINE, "contact": {**CALLER, "id_number": "11010519491231002X"}}
    first = desk.post(url, json=body)
    assert first.status_code == 201, first.text
    made = first.json()
    steps = desk.get(f"/v1/petitions/{made['id']}/timeline").json()["items"]
    variants = [
        {"category": "report"}, {"title": "噪音扰民！"}, {"content": "夜间施工，至凌晨两点。"},
        {"contact": {**body["contact"], "name": "赵七"}}, {"contact": {**body["contact"], "phone": "13700001235"}},
        {"contact": {**body["contact"], "id_number": None}}, {"contact": CALLER},
    ]
    for change in variants:
        answer = assert_error(desk.post(url, json={**body, **change}), 409, "import_conflict")
        assert answer["error"]["details"] == {"petition_id": made["id"], "source_ref": made["source_ref"]}, change
        assert "13700001234" not in str(answer) and "赵六" not in str(answer)
    # Identical (the phone spelled with a country code and spaces is the same phone): that case.
    for same in (body, {**body, "contact": {**body["contact"], "phone": "+86 137 0000 1234"}}):
        again = desk.post(url, json=same)
        assert again.status_code == 200, again.text
        assert again.json() == {**made, "created": False, "sla": again.json()["sla"]}
    case = desk.get(f"/v1/petitions/{made['id']}").json()
    assert (case["category"], case["title"], case["content"]) == ("complaint", "噪音扰民", "夜间施工。")
    assert case["contact"] == body["contact"]
    assert desk.get(f"/v1/petitions/{made['id']}/timeline").json()["items"] == steps
    assert _count(stack) == 1

    # Comments: the same account and comment id.
    url = "/v1/petitions/imports/comments"
    comment = {"account_id": accounts["weibo"]["id"], "comment_id": "c-77", "category": "consultation",
               "content": "请问社保卡补办要多久？"}
    got = eventually(lambda: (r := who["app"].post(url, json=comment)).status_code != 404 and r)
    assert got.status_code == 201, got.text
    for change in ({"content": "请问社保卡补办要多久？加急呢？"}, {"title": "社保卡"}, {"category": "help"},
                   {"contact": {"name": "钱八", "phone": "13800002222"}}):
        answer = assert_error(desk.post(url, json={**comment, **change}), 409, "import_conflict")
        assert answer["error"]["details"]["petition_id"] == got.json()["id"]
    again = who["app"].post(url, json=comment)
    assert again.status_code == 200 and again.json()["id"] == got.json()["id"] and again.json()["created"] is False
    assert _count(stack) == 2
    log = stack.services["petition"].log_path.read_text()
    assert "13700001234" not in log and "赵六" not in log and "赵七" not in log and "1101051949" not in log

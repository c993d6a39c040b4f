"""The petition workflow as real processes (account + petition): accept / decline, 转办 to a
city unit, return within 5 working days, waiting for the citizen (the clock pauses), an
extension approved by the unit's principal, answer, the citizen's rating and 复查 / 复核 by
tracking code, duplicates linked, the timeline, refusals with stable codes, gRPC parity,
sealed contact data; then SLA timers (fired once each, surviving a restart), supervision,
statistics and the Open311 face."""
from __future__ import annotations

import asyncio
import csv
import io

import grpc
import nats
import pytest

from govmedia.events.v1 import events_pb2 as ev
from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from tests.helpers import assert_error, bus_messages, client, db_dialect, eventually, login, service_db

PASSWORD = "flow-pass-2026"
API_KEY = "open311-test-key-0123456789"
COMPLAINT = {"category": "complaint", "title": "小区噪音扰民", "content": "夜间施工至凌晨两点。", "channel": "web",
             "contact": {"name": "张三", "phone": "13812345678", "id_number": "11010519491231002X"},
             "location": "示范市幸福路 1 号"}


@pytest.fixture
def world(calendar_file, stack_factory, db_backend):
    """The demo province, a city with a unit, and its handler, principal and supervisor."""
    stack = stack_factory(db_backend, only=("account", "petition"), env={
        "PETITION_OPEN311_API_KEYS": f"other-key,{API_KEY}", "PETITION_TIMER_POLL_S": "0.5"})
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]
    region = ops.post("/v1/regions", json={"name": "甲市", "parent_id": home["region_id"], "level": "city"}).json()
    unit = ops.post("/v1/units", json={"name": "甲市城管局", "region_id": region["id"]}).json()
    for name, role in (("handler-a", "handler"), ("principal-a", "principal"), ("supervisor-a", "supervisor")):
        r = ops.post("/v1/users", json={"username": name, "password": PASSWORD, "unit_id": unit["id"],
                                        "roles": [role]})
        assert r.status_code == 201, r.text
    people = {n: client(stack, "petition", login(stack, n)) for n in ("handler", "supervisor", "ops", "editor")}
    people.update({n: client(stack, "petition", login(stack, n, PASSWORD))
                   for n in ("handler-a", "principal-a", "supervisor-a")})
    people["public"] = client(stack, "petition")
    return stack, {"unit": unit["id"], "home": home["id"], "region": region["id"]}, people


def _assign(desk, pid: str, unit: str) -> dict:
    """转办 (the directory learns of the city unit from the account service's event)."""
    def go():
        r = desk.post(f"/v1/petitions/{pid}/assign", json={"unit_id": unit, "note": "请依职责办理"})
        if r.status_code == 422 and r.json()["error"]["code"] == "unknown_unit":
            return None
        assert r.status_code == 200, r.text
        return r.json()
    return eventually(go)


def test_the_workflow_from_intake_to_review(world):
    stack, ids, who = world
    desk, city, principal, public = who["handler"], who["handler-a"], who["principal-a"], who["public"]
    receipt = public.post("/v1/petitions", json=COMPLAINT).json()
    pid, code = receipt["id"], receipt["tracking_code"]

    # Before acceptance only the provincial desk reaches the case.
    assert_error(city.get(f"/v1/petitions/{pid}"), 403, "other_unit")
    assert pid not in [p["id"] for p in city.get("/v1/petitions").json()["items"]]
    assert_error(city.post(f"/v1/petitions/{pid}/accept", json={}), 403, "other_unit")
    assert_error(who["editor"].post(f"/v1/petitions/{pid}/accept", json={}), 403, "role_required")
    assert_error(desk.post(f"/v1/petitions/{pid}/assign", json={"unit_id": ids["unit"]}), 409, "invalid_state")
    assert_error(desk.post(f"/v1/petitions/{pid}/fly", json={}), 422, "validation_failed")
    got = desk.get(f"/v1/petitions/{pid}").json()
    assert set(got["actions"]) == {"accept", "decline"}
    assert got["contact"]["id_number"] == "11010519491231002X"
    accepted = desk.post(f"/v1/petitions/{pid}/accept", json={"note": "属实，受理"}).json()
    assert accepted["status"] == "accepted" and accepted["desk_unit_id"] == ids["home"]
    assert_error(desk.post(f"/v1/petitions/{pid}/accept", json={}), 409, "invalid_state")

    # 转办 to the city unit: its handler now works the case and sees the contact.
    assert_error(desk.post(f"/v1/petitions/{pid}/assign", json={}), 422, "unit_id_required")
    assert_error(desk.post(f"/v1/petitions/{pid}/assign", json={"unit_id": "nope"}), 422, "unknown_unit")
    assigned = _assign(desk, pid, ids["unit"])
    assert assigned["status"] == "assigned" and assigned["unit_id"] == ids["unit"]
    mine = city.get(f"/v1/petitions/{pid}").json()
    assert mine["contact"] == {"name": "张三", "phone": "13812345678", "id_number": "11010519491231002X"}
    assert set(mine["actions"]) == {"return", "start", "wait", "answer"}
    assert who["supervisor-a"].get(f"/v1/petitions/{pid}").json()["contact"] == {
        "name": "张*", "phone": "138****5678", "id_number": "110***********002X"}
    assert_error(desk.post(f"/v1/petitions/{pid}/start", json={}), 403, "not_case_handler")
    assert city.post(f"/v1/petitions/{pid}/start", json={}).json()["status"] == "in_progress"

    # Waiting for the citizen pauses the clock; the citizen's supplement resumes it.
    assert_error(city.post(f"/v1/petitions/{pid}/wait", json={}), 422, "note_required")
    waiting = city.post(f"/v1/petitions/{pid}/wait", json={"note": "请补充施工地点照片"}).json()
    assert waiting["status"] == "waiting" and waiting["sla"]["paused"] is True
    assert public.get(f"/v1/petitions/track/{code}").json()["sla"]["paused"] is True
    back = public.post(f"/v1/petitions/track/{code}/supplement", json={"note": "照片已上传"})
    assert back.status_code == 200, back.text
    assert back.json()["status"] == "in_progress" and back.json()["sla"]["paused"] is False

    # Extension: the unit's principal, once, within the policy's maximum, with a reason for the citizen.
    assert_error(city.post(f"/v1/petitions/{pid}/extend", json={"days": 5, "reason": "需现场核查"}), 403,
                 "role_required")
    assert_error(principal.post(f"/v1/petitions/{pid}/extend", json={"days": 20, "reason": "需现场核查"}), 422,
                 "extension_too_long")
    assert_error(principal.post(f"/v1/petitions/{pid}/extend", json={"days": 5}), 422, "reason_required")
    before = city.get(f"/v1/petitions/{pid}").json()["sla"]["due_at"]
    extended = principal.post(f"/v1/petitions/{pid}/extend", json={"days": 5, "reason": "需现场核查"}).json()
    assert extended["extension_days"] == 5 and extended["sla"]["due_at"] > before
    assert_error(principal.post(f"/v1/petitions/{pid}/extend", json={"days": 1, "reason": "再延"}), 409,
                 "extension_used")
    assert public.get(f"/v1/petitions/track/{code}").json()["extension_reason"] == "需现场核查"

    # Answer, the citizen's rating (closes), 复查 and 复核 by tracking code, then no more.
    assert_error(public.post(f"/v1/petitions/track/{code}/rate", json={"rating": 5}), 409, "invalid_state")
    answered = city.post(f"/v1/petitions/{pid}/answer", json={"answer": "已责令施工方夜间停工。"}).json()
    assert answered["status"] == "answered" and answered["answered_on_time"] is True
    assert answered["sla"]["running"] is False and answered["sla"]["time_left_s"] is None
    assert_error(public.post(f"/v1/petitions/track/{code}/rate", json={"rating": 9}), 422, "validation_failed")
    rated = public.post(f"/v1/petitions/track/{code}/rate", json={"rating": 2, "note": "仍有噪音"}).json()
    assert rated["status"] == "closed" and rated["rating"] == 2 and rated["can_recheck"] is True
    assert_error(public.post(f"/v1/petitions/track/{code}/rate", json={"rating": 3}), 409, "already_rated")
    assert_error(public.post(f"/v1/petitions/track/{code}/recheck", json={}), 422, "reason_required")
    recheck = public.post(f"/v1/petitions/track/{code}/recheck", json={"reason": "问题未解决"}).json()
    assert recheck["status"] == "rechecking" and recheck["sla"]["stage"] == "recheck"
    assert recheck["sla"]["policy"] == "gd12345.complaint.30d"
    assert_error(city.post(f"/v1/petitions/{pid}/decide", json={"decision": "upheld", "answer": "维持"}), 403,
                 "not_case_handler")
    decided = desk.post(f"/v1/petitions/{pid}/decide", json={"decision": "revised", "answer": "责令整改"}).json()
    assert decided["status"] == "answered" and decided["recheck_level"] == 1
    assert public.post(f"/v1/petitions/track/{code}/recheck", json={"reason": "仍不服"}).json()["status"] == "reviewing"
    desk.post(f"/v1/petitions/{pid}/decide", json={"decision": "upheld", "answer": "维持复查意见"})
    final = public.post(f"/v1/petitions/track/{code}/recheck", json={"reason": "再次申请"})
    assert_error(final, 409, "review_final")
    assert public.get(f"/v1/petitions/track/{code}").json()["can_recheck"] is False

    # The same citizen on the same matter: linked (after 复核, not taken again), not counted twice.
    # The citizen's receipt does not tell (issue 16: received, as any other); staff see the link.
    again = public.post("/v1/petitions", json={**COMPLAINT, "title": "小区噪音扰民！"}).json()
    assert again["status"] == "received" and "duplicate_of" not in again
    linked = desk.get(f"/v1/petitions/{again['id']}").json()
    assert linked["status"] == "linked" and linked["duplicate_of"] == pid and linked["sla"]["running"] is False

    # The timeline: every step with actor, time and note.
    steps = desk.get(f"/v1/petitions/{pid}/timeline").json()["items"]
    actions = [s["action"] for s in steps]
    assert actions[:9] == ["received", "accept", "assign", "start", "wait", "supplement", "extend", "answer", "rate"]
    assert "recheck" in actions and "decide" in actions and "repeated" in actions
    assert all(s["at"] and s["actor"] for s in steps)
    assert "甲市城管局" in steps[2]["note"] and "需现场核查" in steps[6]["note"]
    tracked = public.get(f"/v1/petitions/track/{code}").json()
    assert "repeated" not in [t["action"] for t in tracked["timeline"]]

    # Sealed at rest: neither the name nor the phone nor the ID number is in the database in clear.
    rows = asyncio.run(service_db(stack, "petition", f"SELECT * FROM petitions WHERE id = '{pid}'"))
    assert "13812345678" not in str(rows) and "张三" not in str(rows) and "002X" not in str(rows)
    log = stack.services["petition"].log_path.read_text()
    assert "13812345678" not in log and "张三" not in log and "002X" not in log
    _decline_and_return_within_five_working_days(world)


def _decline_and_return_within_five_working_days(world):
    stack, ids, who = world
    desk, city, public = who["handler"], who["handler-a"], who["public"]
    first = public.post("/v1/petitions", json={**COMPLAINT, "contact": {"name": "李四", "phone": "13900001111"}}).json()
    assert_error(desk.post(f"/v1/petitions/{first['id']}/decline", json={"reason": "不属于本平台受理范围"}), 422,
                 "redirect_to_required")
    declined = desk.post(f"/v1/petitions/{first['id']}/decline",
                         json={"reason": "属于司法程序事项", "redirect_to": "示范市人民法院"}).json()
    assert declined["status"] == "declined" and declined["sla"]["running"] is False
    tracked = public.get(f"/v1/petitions/track/{first['tracking_code']}").json()
    assert tracked["decline_reason"] == "属于司法程序事项" and tracked["redirect_to"] == "示范市人民法院"

    second = public.post("/v1/petitions", json={"category": "help", "title": "路灯不亮", "content": "幸福路路灯坏了",
                                                "channel": "app"}).json()
    desk.post(f"/v1/petitions/{second['id']}/accept", json={})
    _assign(desk, second["id"], ids["unit"])
    assert_error(city.post(f"/v1/petitions/{second['id']}/return", json={}), 422, "reason_required")
    returned = city.post(f"/v1/petitions/{second['id']}/return", json={"reason": "路灯归区住建局管理"}).json()
    assert returned["status"] == "returned" and returned["unit_id"] is None
    assert_error(city.get(f"/v1/petitions/{second['id']}"), 403, "other_unit")
    # Reassigned; then, assigned too long ago, it can no longer be returned.
    _assign(desk, second["id"], ids["unit"])
    asyncio.run(service_db(stack, "petition", "UPDATE petitions SET assigned_at = '2026-01-05 02:00:00"
                           + ("+00" if db_dialect(stack, "petition") == "postgresql" else "") +
                           f"' WHERE id = '{second['id']}'"))
    assert_error(city.post(f"/v1/petitions/{second['id']}/return", json={"reason": "晚了"}), 409,
                 "return_window_closed")


async def test_grpc_actions_and_the_events(world):
    stack, ids, who = world
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("govmedia.petition.petition.*", stream="GOVMEDIA_PETITION")
    try:
        md = lambda user, pw=None: (("authorization", f"Bearer {login(stack, user, pw) if pw else login(stack, user)}"),)  # noqa: E731
        async with grpc.aio.insecure_channel(stack.services["petition"].grpc_target) as channel:
            stub = pb_grpc.PetitionServiceStub(channel)
            created = await stub.CreatePetition(pb.CreatePetitionRequest(
                category="consultation", title="社保卡补办", content="在哪里补办？", channel="app"))
            desk = md("handler")
            accepted = await stub.Act(pb.ActRequest(id=created.id, action="accept"), metadata=desk)
            assert accepted.status == "accepted" and accepted.sla.running
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Act(pb.ActRequest(id=created.id, action="accept"), metadata=desk)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert dict(err.value.trailing_metadata())["error-code"] == "invalid_state"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Act(pb.ActRequest(id=created.id, action="fly"), metadata=desk)
            assert dict(err.value.trailing_metadata())["error-code"] == "validation_failed"
            for _ in range(100):
                try:
                    await stub.Act(pb.ActRequest(id=created.id, action="assign", unit_id=ids["unit"]), metadata=desk)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert dict(exc.trailing_metadata())["error-code"] == "unknown_unit"
                    await asyncio.sleep(0.2)
            city = md("handler-a", PASSWORD)
            answered = await stub.Act(pb.ActRequest(id=created.id, action="answer", answer="到社保窗口补办。"),
                                      metadata=city)
            assert answered.status == "answered" and answered.answer == "到社保窗口补办。"
            timeline = await stub.GetTimeline(pb.GetPetitionRequest(id=created.id), metadata=desk)
            assert [e.action for e in timeline.items] == ["received", "accept", "assign", "answer"]
            code = (await stub.CreatePetition(pb.CreatePetitionRequest(
                category="consultation", title="公积金", content="如何提取？", channel="app"))).tracking_code
            tracked = await stub.Track(pb.TrackRequest(tracking_code=code))
            assert tracked.status == "received" and tracked.sla.stage == "handling"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CitizenAct(pb.CitizenActRequest(tracking_code=code, action="rate", rating=5))
            assert dict(err.value.trailing_metadata())["error-code"] == "invalid_state"
        seen = []
        deadline = asyncio.get_running_loop().time() + 90  # a loaded machine relays late, not never
        while len(seen) < 3 and asyncio.get_running_loop().time() < deadline:
            try:
                msgs = await sub.fetch(10, timeout=5)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            for m in msgs:
                await m.ack()
            seen += [m for m in msgs if not m.subject.endswith(".received")]
        subjects = [m.subject for m in seen]
        assert subjects[:3] == ["govmedia.petition.petition.accepted", "govmedia.petition.petition.assigned",
                                "govmedia.petition.petition.answered"]
        event = ev.PetitionChanged.FromString(seen[1].data)
        assert event.petition_id == created.id and event.status == "assigned" and event.unit_id == ids["unit"]
        assert event.due_at and event.stage == "handling"
    finally:
        await nc.close()


def _sla_policies_are_versioned_and_fixed_at_creation(world):
    stack, ids, who = world
    ops, public, handler = who["ops"], who["public"], who["handler"]
    current = {p["category"]: p for p in handler.get("/v1/sla/policies").json()["items"]}
    assert current["consultation"]["handling_days"] == 2 and current["consultation"]["handling_unit"] == "workdays"
    assert current["petition"]["acceptance_days"] == 15 and current["petition"]["handling_days"] == 60
    assert current["petition"]["extension_max_days"] == 30 and current["complaint"]["handling_days"] == 15
    assert current["help"]["warn_share"] == 0.8 and current["help"]["version"] == 1
    before = public.post("/v1/petitions", json={"category": "help", "title": "求助", "content": "c",
                                                "channel": "web"}).json()
    body = {"handling_days": 5, "handling_unit": "workdays", "extension_max_days": 5, "warn_share": 0.5,
            "note": "试行"}
    assert_error(handler.put("/v1/sla/policies/help", json=body), 403, "role_required")
    assert_error(ops.put("/v1/sla/policies/help", json={**body, "handling_days": 0}), 422, "validation_failed")
    assert_error(ops.put("/v1/sla/policies/help", json={**body, "acceptance_days": 3}), 422, "acceptance_incomplete")
    v2 = ops.put("/v1/sla/policies/help", json=body)
    assert v2.status_code == 200, v2.text
    assert v2.json()["version"] == 2 and v2.json()["code"] == "gd12345.help.v2"
    after = public.post("/v1/petitions", json={"category": "help", "title": "又一求助", "content": "c",
                                               "channel": "web"}).json()
    assert after["sla"]["policy"] == "gd12345.help.v2.5wd" and after["sla"]["policy_version"] == 2
    assert handler.get(f"/v1/petitions/{before['id']}").json()["sla"] == {
        **before["sla"], "time_left_s": handler.get(f"/v1/petitions/{before['id']}").json()["sla"]["time_left_s"]}
    assert before["sla"]["policy"] == "gd12345.help.10wd" and before["sla"]["policy_version"] == 1
    history = handler.get("/v1/sla/policies", params={"category": "help", "history": "true"}).json()["items"]
    assert [p["version"] for p in history] == [1, 2]


def test_timers_fire_once_supervision_and_statistics(world):
    stack, ids, who = world
    desk, city, supervisor = who["handler"], who["handler-a"], who["supervisor"]
    pid = who["public"].post("/v1/petitions", json=COMPLAINT).json()["id"]
    desk.post(f"/v1/petitions/{pid}/accept", json={})
    _assign(desk, pid, ids["unit"])
    timers = asyncio.run(service_db(stack, "petition",
                                    f"SELECT kind, fired_at FROM petition_timers WHERE petition_id = '{pid}' "
                                    "AND cancelled = false ORDER BY due_at"))
    assert [t[0] for t in timers] == ["warning", "breach"] and all(t[1] is None for t in timers)

    # The deadline passes (moved into the past behind the service's back) while the service is down.
    pg = db_dialect(stack, "petition") == "postgresql"
    past = "2026-01-05 01:00:00" + ("+00" if pg else "")
    stack.services["petition"].kill()
    asyncio.run(service_db(stack, "petition",
                           f"UPDATE petition_timers SET due_at = '{past}' WHERE petition_id = '{pid}'",
                           f"UPDATE petitions SET due_at = '{past}', warn_at = '{past}' WHERE id = '{pid}'"))
    stack.services["petition"].start()
    stack.services["petition"].wait_ready()

    def fired(kind):
        rows = asyncio.run(service_db(stack, "petition", "SELECT count(*) FROM petition_timers WHERE "
                                      f"petition_id = '{pid}' AND kind = '{kind}' AND fired_at IS NOT NULL"))
        return rows[0][0]
    eventually(lambda: fired("breach") == 1 and fired("warning") == 1)
    sups = eventually(lambda: supervisor.get("/v1/supervisions").json()["items"])
    assert len(sups) == 1 and sups[0]["petition_id"] == pid and sups[0]["reason"] == "breach"
    assert sups[0]["unit_id"] == ids["unit"] and sups[0]["status"] == "open"
    assert who["supervisor-a"].get("/v1/supervisions").json()["items"][0]["id"] == sups[0]["id"]
    # The reminder (催办) and then the public notice (通报): each once.
    asyncio.run(service_db(stack, "petition", f"UPDATE petition_timers SET due_at = '{past}' "
                           f"WHERE petition_id = '{pid}' AND kind = 'reminder'"))
    eventually(lambda: fired("reminder") == 1)
    asyncio.run(service_db(stack, "petition", f"UPDATE petition_timers SET due_at = '{past}' "
                           f"WHERE petition_id = '{pid}' AND kind = 'notice'"))
    eventually(lambda: fired("notice") == 1)
    sup = eventually(lambda: (s := supervisor.get(f"/v1/supervisions/{sups[0]['id']}").json())["public_notice_at"]
                     and s)
    assert sup["reminded_at"] and sup["public_notice_at"]
    actions = [e["action"] for e in desk.get(f"/v1/petitions/{pid}/timeline").json()["items"]]
    assert [a for a in actions if a.startswith("sla_")] == ["sla_warning", "sla_breach", "sla_reminder", "sla_notice"]

    msgs = asyncio.run(bus_messages(stack, "govmedia.petition.sla.>", "GOVMEDIA_PETITION"))
    assert sorted(m.subject.rsplit(".", 1)[1] for m in msgs) == ["breached", "public_notice", "reminder", "warning"]
    breach = next(ev.PetitionSlaAlert.FromString(m.data) for m in msgs if m.subject.endswith("breached"))
    assert breach.unit_id == ids["unit"] and breach.supervision_id == sups[0]["id"] and "supervisor" in breach.notify_roles
    assert all(b"13812345678" not in m.data for m in msgs)

    # The supervisor's views: overdue by unit, overdue list, a note with a deadline.
    overview = supervisor.get("/v1/supervision/overview").json()["units"]
    row = next(u for u in overview if u["unit_id"] == ids["unit"])
    assert row["overdue"] == 1 and row["unit_name"] == "甲市城管局"
    assert [p["id"] for p in supervisor.get("/v1/petitions", params={"overdue": "true"}).json()["items"]] == [pid]
    assert_error(city.post(f"/v1/petitions/{pid}/supervision", json={"note": "x"}), 403, "role_required")
    assert_error(supervisor.post(f"/v1/petitions/{pid}/supervision", json={"note": "限期", "deadline": "2020-01-01"}),
                 422, "deadline_in_past")
    noted = supervisor.post(f"/v1/petitions/{pid}/supervision", json={"note": "请三日内报告", "deadline": "2026-12-30"})
    assert noted.status_code == 200, noted.text
    assert noted.json()["id"] == sups[0]["id"] and noted.json()["notes"][0]["note"] == "请三日内报告"
    assert_error(who["editor"].get("/v1/supervision/overview"), 403, "role_required")

    # Answered late: not on time; the supervision closes.
    answered = city.post(f"/v1/petitions/{pid}/answer", json={"answer": "已处理"}).json()
    assert answered["answered_on_time"] is False
    assert supervisor.get(f"/v1/supervisions/{sups[0]['id']}").json()["status"] == "closed"
    stats = supervisor.get("/v1/stats/sla", params={"group_by": "unit"}).json()["items"]
    row = next(r for r in stats if r["group"] == ids["unit"])
    assert row["received"] == 1 and row["answered"] == 1 and row["on_time"] == 0 and row["on_time_rate"] == 0
    assert row["avg_handling_workdays"] == 0
    by_category = supervisor.get("/v1/stats/sla", params={"group_by": "category"}).json()["items"]
    assert next(r for r in by_category if r["group"] == "complaint")["received"] == 1
    exported = supervisor.get("/v1/stats/sla", params={"group_by": "unit", "format": "csv"})
    assert exported.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert any(r["group"] == ids["unit"] and r["name"] == "甲市城管局" and r["on_time_rate"] == "0.0" for r in table)
    assert_error(supervisor.get("/v1/stats/sla", params={"group_by": "weather"}), 422, "invalid_group_by")
    # … narrowed to a unit or a region subtree: the city's figures, or nothing elsewhere
    regions = client(stack, "account", login(stack, "ops")).get("/v1/regions", params={"limit": 200}).json()["items"]
    city_path = next(r["path"] for r in regions if r["id"] == ids["region"])
    narrowed = supervisor.get("/v1/stats/sla", params={"group_by": "category", "unit_id": ids["unit"]}).json()["items"]
    assert [(r["group"], r["received"]) for r in narrowed] == [("complaint", 1)]
    assert supervisor.get("/v1/stats/sla", params={"unit_id": "nope"}).json()["items"] == []
    assert [r["received"] for r in supervisor.get("/v1/stats/sla", params={"region": city_path}).json()["items"]] == [1]
    assert supervisor.get("/v1/stats/sla", params={"region": "/nowhere/"}).json()["items"] == []


def _open311_georeport_v2(world):
    stack, ids, who = world
    o = client(stack, "petition")
    services = o.get("/open311/v2/services.json").json()
    assert [s["service_code"] for s in services] == ["consultation", "help", "suggestion", "complaint", "report",
                                                     "petition"]
    assert set(services[0]) == {"service_code", "service_name", "description", "metadata", "type", "keywords",
                                "group"}
    assert o.get("/open311/v2/services/complaint.json").json() == {"service_code": "complaint", "attributes": []}
    missing = o.get("/open311/v2/services/graffiti.json")
    assert missing.status_code == 404 and missing.json()[0]["code"] == 404 and missing.json()[0]["description"]

    form = {"service_code": "complaint", "lat": "23.13", "long": "113.26", "address_string": "幸福路 1 号",
            "description": "夜间施工噪音", "first_name": "三", "last_name": "张", "phone": "13812345678"}
    for bad_key in ({}, {"api_key": "wrong"}):
        r = o.post("/open311/v2/requests.json", data={**form, **bad_key})
        assert r.status_code == 403 and r.json()[0]["code"] == 403, r.text
    r = o.post("/open311/v2/requests.json", data={**form, "api_key": API_KEY, "phone": ""})
    assert r.status_code == 400 and r.json()[0]["code"] == 400  # a complaint needs contact
    r = o.post("/open311/v2/requests.json", data={**form, "api_key": API_KEY, "lat": "", "address_string": ""})
    assert r.status_code == 400
    r = o.post("/open311/v2/requests.json", data={**form, "api_key": API_KEY, "service_code": "graffiti"})
    assert r.status_code == 404
    r = o.post("/open311/v2/requests.json", data={**form, "api_key": API_KEY})
    assert r.status_code == 201, r.text
    [created] = r.json()
    assert set(created) == {"service_request_id", "service_notice", "account_id"}
    rid = created["service_request_id"]

    [one] = o.get(f"/open311/v2/requests/{rid}.json").json()
    assert one["status"] == "open" and one["service_code"] == "complaint" and one["lat"] == 23.13
    # The public face (issue 16): coordinates on the 0.01° grid, no address, no agency.
    assert one["long"] == 113.26 and one["address"] is None and one["description"] == "夜间施工噪音"
    staff = who["handler"].get(f"/v1/petitions/{rid}").json()
    assert one["expected_datetime"] == staff["sla"]["due_at"] and staff["channel"] == "open311"
    assert staff["contact"] == {"name": "张三", "phone": "13812345678"}
    assert "13812345678" not in o.get(f"/open311/v2/requests/{rid}.json").text
    for key in ("service_request_id", "status", "status_notes", "service_name", "service_code", "description",
                "agency_responsible", "service_notice", "requested_datetime", "updated_datetime",
                "expected_datetime", "address", "address_id", "zipcode", "lat", "long", "media_url"):
        assert key in one
    assert o.get("/open311/v2/requests/nope.json").status_code == 404

    listed = o.get("/open311/v2/requests.json").json()
    assert rid in [x["service_request_id"] for x in listed]
    assert o.get("/open311/v2/requests.json", params={"status": "closed"}).json() == []
    assert [x["service_request_id"] for x in o.get("/open311/v2/requests.json",
                                                   params={"service_request_id": f"{rid},nope"}).json()] == [rid]
    assert o.get("/open311/v2/requests.json", params={"service_code": "report"}).status_code == 403  # never public
    assert {x["service_code"] for x in o.get("/open311/v2/requests.json", params={"service_code": "help,complaint"}).json()} \
        == {"help", "complaint"}
    too_long = o.get("/open311/v2/requests.json", params={"start_date": "2026-01-01T00:00:00Z",
                                                          "end_date": "2026-06-01T00:00:00Z"})
    assert too_long.status_code == 400 and "90" in too_long.json()[0]["description"]
    assert o.get("/open311/v2/requests.json", params={"status": "lost"}).status_code == 400
    assert o.get("/open311/v2/requests.json", params={"start_date": "yesterday"}).status_code == 400

    code = None  # the tracking code works as the token
    receipt = o.post("/v1/petitions", json={"category": "consultation", "title": "t", "content": "c",
                                            "channel": "web"}).json()
    code = receipt["tracking_code"]
    assert o.get(f"/open311/v2/tokens/{code}.json").json() == [{"service_request_id": receipt["id"], "token": code}]
    assert o.get("/open311/v2/tokens/ZZZZZZZZZZZZ.json").status_code == 404


def test_sla_policies_and_the_open311_face(world):
    # One stack for both (start-up is most of a test's time).
    _sla_policies_are_versioned_and_fixed_at_creation(world)
    _open311_georeport_v2(world)

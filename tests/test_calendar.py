"""The calendar end to end (issue 15): deadlines reaching a year without a State Council notice
are accepted as provisional; ops load the notice on the account service; the petition service
learns it over the bus and both count their open deadlines again, visibly, once.

Dates follow the real clock: the year under test is the first one the calendar holds as
provisional (the year after this one while chinesecalendar stops at 2026), so the test means
the same in any December."""
from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import grpc
import httpx
import pytest

from govmedia.account.v1 import account_pb2 as pb
from govmedia.events.v1 import events_pb2 as ev
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia.petition.v1 import petition_pb2 as petition_pb
from govmedia.petition.v1 import petition_pb2_grpc as petition_grpc
from govmedia_kit import holiday_law, workdays
from govmedia_kit.workdays import WorkCalendar, YearTable
from tests.helpers import assert_error, bus_messages, client, db_dialect, eventually, login, service_db
from tests.test_observability import scrape, value

PASSWORD = "calendar-pass-2026"
RESPONSIBLE = {"principal": "张三", "deputy": "李四", "chief_editor": "王五"}
COMPLAINT = {"category": "complaint", "title": "小区门口占道经营", "content": "每天傍晚摊贩占满人行道，老人孩子只能走机动车道。",
             "channel": "web", "contact": {"name": "王芳", "phone": "13700001234"}}


def today() -> date:
    return workdays.local_date(datetime.now(workdays.SHANGHAI))


def instant(value) -> datetime:
    """A timestamp as the API answers it (ISO with offset) or as a database column holds it
    (SQLite: naive UTC text; PostgreSQL: aware)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def provisional_year() -> int:
    year = WorkCalendar().first_provisional_year()
    if year is None:
        pytest.skip("every year a deadline may reach is official in this library release")
    return year


def notice(year: int, extra: list[date] = (), workdays_: list[date] = ()) -> dict:
    """A notice as ops would type it: the law's days off on weekdays, plus what the State Council
    added (synthetic TEST data, not the real notice)."""
    law = [d for d in holiday_law.statutory_holidays(year) if d.weekday() < 5]
    return {"holidays": sorted({d.isoformat() for d in [*law, *extra]}),
            "workdays": [d.isoformat() for d in workdays_],
            "notice": {"number": f"国办发明电〔{year - 1}〕99号（测试）", "published_on": today().isoformat()}}


@pytest.fixture
def world(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "petition"), env={
        "PETITION_CALENDAR_POLL_S": "0.3", "ACCOUNT_CALENDAR_POLL_S": "0.3", "PETITION_TIMER_POLL_S": "0.5",
        "GOVMEDIA_METRICS_REFRESH_S": "0.3"})
    ops = client(stack, "account", login(stack, "ops"))
    home = ops.get("/v1/units").json()["items"][0]
    region = ops.post("/v1/regions", json={"name": "乙市", "parent_id": home["region_id"], "level": "city"}).json()
    unit = ops.post("/v1/units", json={"name": "乙市政府办", "region_id": region["id"]}).json()
    r = ops.post("/v1/users", json={"username": "city-ops", "password": PASSWORD, "unit_id": unit["id"], "roles": ["ops"]})
    assert r.status_code == 201, r.text
    return stack, ops, home


def test_bad_notices_and_callers_store_nothing(world):
    stack, ops, _ = world
    year = provisional_year()
    good = notice(year)
    law = sorted(d for d in holiday_law.statutory_holidays(year) if d.weekday() < 5)
    weekday = next(date(year, 3, d) for d in range(2, 10) if date(year, 3, d).weekday() < 5)
    saturday = next(date(year, 3, d) for d in range(2, 10) if date(year, 3, d).weekday() == 5)
    path = f"/v1/calendar/years/{year}"
    for who, code in (("editor", "role_required"), ("regulator", "role_required"), ("handler", "role_required")):
        assert_error(client(stack, "account", login(stack, who)).put(path, json=good), 403, code)
    city_ops = client(stack, "account", login(stack, "city-ops", PASSWORD))
    assert_error(city_ops.put(path, json=good), 403, "province_only")
    assert_error(client(stack, "account").put(path, json=good), 401, "unauthenticated")
    bad = [
        ({**good, "holidays": [*good["holidays"], f"{year + 1}-01-04"]}, "date_outside_year"),
        ({**good, "workdays": [law[0].isoformat()]}, "date_both_holiday_and_workday"),
        ({**good, "holidays": [*good["holidays"], saturday.isoformat()]}, "weekend_listed_as_holiday"),
        ({**good, "workdays": [weekday.isoformat()]}, "weekday_listed_as_workday"),
        ({**good, "holidays": good["holidays"][1:]}, "statutory_holiday_missing"),
        ({**good, "notice": {"number": "x", "published_on": (today() + timedelta(days=3)).isoformat()}},
         "notice_date_in_future"),
        ({**good, "holidays": ["2027-02-30"]}, "validation_failed"),
        ({**good, "notice": {"number": ""}}, "validation_failed"),
        ({**good, "color": "red"}, "validation_failed"),
    ]
    for body, code in bad:
        assert_error(ops.put(path, json=body), 422, code)
    assert_error(ops.put(f"/v1/calendar/years/{today().year - 1}", json=notice(today().year - 1)), 422,
                 "calendar_year_past")
    assert_error(ops.put(f"/v1/calendar/years/{today().year + 3}", json=notice(today().year + 3)), 422,
                 "calendar_year_out_of_range")
    assert_error(ops.put("/v1/calendar/years/1999", json=good), 422, "validation_failed")
    # Nothing was stored: the year is still provisional, it has no version, nothing is on the bus.
    years = {y["year"]: y for y in ops.get("/v1/calendar/years").json()["items"]}
    assert years[year]["source"] == "provisional" and years[year]["calendar"] == "provisional"
    assert years[year]["holidays"] == [d.isoformat() for d in law] and years[year]["workdays"] == []
    assert "全国年节及纪念日放假办法" in years[year]["law"]
    assert years[today().year - 1]["calendar"] == "official"
    assert_error(ops.get(f"/v1/calendar/years/{year}/versions"), 404, "calendar_year_not_found")
    assert asyncio.run(service_db(stack, "account", "SELECT count(*) FROM calendar_year_versions"))[0][0] == 0

    # The same over gRPC: refusals with their codes, and the list for any signed-in person.
    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            editor = (("authorization", f"Bearer {login(stack, 'editor')}"),)
            request = pb.PutCalendarYearRequest(year=year, holidays=good["holidays"],
                                                notice=pb.CalendarNotice(**good["notice"]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PutCalendarYear(request, metadata=editor)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            ops_md = (("authorization", f"Bearer {login(stack, 'ops')}"),)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.PutCalendarYear(pb.PutCalendarYearRequest(
                    year=year, holidays=[*good["holidays"], saturday.isoformat()],
                    notice=pb.CalendarNotice(**good["notice"])), metadata=ops_md)
            assert dict(err.value.trailing_metadata())["error-code"] == "weekend_listed_as_holiday"
            listed = await stub.ListCalendarYears(pb.ListCalendarYearsRequest(**{"from": year, "to": year}),
                                                  metadata=editor)
            assert [(y.year, y.source, y.calendar) for y in listed.items] == [(year, "provisional", "provisional")]
    asyncio.run(over_grpc())
    assert asyncio.run(service_db(stack, "account", "SELECT count(*) FROM calendar_year_versions"))[0][0] == 0


def grpc_view(stack, tracking_code: str, account_id: str) -> tuple[str, str, str]:
    """What gRPC says the deadlines rest on: the citizen's tracking, the account, its filing."""
    async def go():
        token = (("authorization", f"Bearer {login(stack, 'ops')}"),)
        async with grpc.aio.insecure_channel(stack.services["petition"].grpc_target) as channel:
            tracked = await petition_grpc.PetitionServiceStub(channel).Track(
                petition_pb.TrackRequest(tracking_code=tracking_code))
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            account = await stub.GetAccount(pb.GetAccountRequest(id=account_id), metadata=token)
            filings = await stub.ListFilings(pb.ListFilingsRequest(pending=True), metadata=token)
        [filing] = [f for f in filings.items if f.account_id == account_id]
        return tracked.sla.calendar, account.filing_calendar, filing.calendar
    return asyncio.run(go())


def _first_workday_after(cal: WorkCalendar, day: date, year: int) -> date:
    day = max(day, date(year, 1, 1))
    return cal.next_workday(day)


def test_the_notice_moves_provisional_deadlines_once_and_visibly(world):
    stack, ops, home = world
    year = provisional_year()
    provisional = WorkCalendar()
    now = today()
    # One extra day off in the notice, a weekday the provisional calendar counts as a working day,
    # after the filing's start and before both deadlines.
    opened_on = max(now, date(year, 1, 1) - timedelta(days=4))
    extra = _first_workday_after(provisional, opened_on, year)
    official = WorkCalendar(notice_years={year: YearTable(
        frozenset(d for d in holiday_law.statutory_holidays(year) if d.weekday() < 5) | {extra}, frozenset())})

    # A complaint policy long enough to reach the year (ops set time limits per category).
    target = provisional.add_workdays(extra, 8)
    days = provisional.count_workdays(now + timedelta(days=1), target + timedelta(days=1))
    petition_ops = client(stack, "petition", login(stack, "ops"))
    r = petition_ops.put("/v1/sla/policies/complaint", json={
        "handling_days": days, "handling_unit": "workdays", "extension_max_days": 10, "note": "测试：跨年期限"})
    assert r.status_code == 200, r.text

    public = client(stack, "petition")
    receipt = public.post("/v1/petitions", json=COMPLAINT)
    assert receipt.status_code == 201, receipt.text
    receipt = receipt.json()
    pid, code = receipt["id"], receipt["tracking_code"]
    assert receipt["sla"]["calendar"] == "provisional"
    assert receipt["sla"]["due_at"].startswith((target + timedelta(days=1)).isoformat())  # 24:00 of the last day
    tracked = public.get(f"/v1/petitions/track/{code}").json()
    assert tracked["sla"]["calendar"] == "provisional"
    o311 = public.get(f"/open311/v2/requests/{pid}.json").json()[0]
    assert o311["calendar"] == "provisional" and o311["expected_datetime"] == receipt["sla"]["due_at"]

    # An account opened just before the year: its filing falls due in it, provisionally.
    editor = client(stack, "account", login(stack, "editor"))
    principal = client(stack, "account", login(stack, "reviewer3"))
    acc = editor.post("/v1/account-applications", json={
        "unit_id": home["id"], "platform": "douyin", "name": "示范省政府发布", "reason": "政务公开需要",
        "meeting_ref": "主任办公会", "responsible": RESPONSIBLE, "delivery": {"mode": "stream"}})
    assert acc.status_code == 201, acc.text
    acc = acc.json()
    assert principal.post(f"/v1/accounts/{acc['id']}/approve-opening", json={}).status_code == 200
    opened = editor.post(f"/v1/accounts/{acc['id']}/open", json={"handle": "cal-test", "opened_on": opened_on.isoformat()})
    assert opened.status_code == 200, opened.text
    filing_due = provisional.add_workdays(opened_on, 10)
    assert opened.json()["filing_due"] == filing_due.isoformat() and opened.json()["filing_calendar"] == "provisional"
    [filing] = [f for f in ops.get("/v1/filings?pending=true").json()["items"] if f["account_id"] == acc["id"]]
    assert filing["due_on"] == filing_due.isoformat() and filing["calendar"] == "provisional"

    assert grpc_view(stack, code, acc["id"]) == ("provisional", "provisional", "provisional")
    # Ops see it coming: one open deadline on a provisional year in each service, due in so many days.
    eventually(lambda: value(scrape(stack, "petition"), "govmedia_calendar_provisional_deadlines") == 1)
    assert value(scrape(stack, "petition"), "govmedia_calendar_provisional_first_due_days") == (target - now).days
    eventually(lambda: value(scrape(stack, "account"), "govmedia_calendar_provisional_deadlines") == 1)
    assert value(scrape(stack, "account"), "govmedia_calendar_provisional_first_due_days") == (filing_due - now).days

    # A second case whose clock started long ago (moved back in its row, as a drill would): once
    # counted again, its warning and its deadline lie in the past and fire at once, once each.
    old_case = public.post("/v1/petitions", json={**COMPLAINT, "contact": {"name": "钱七", "phone": "13500002468"}})
    assert old_case.status_code == 201 and old_case.json()["sla"]["calendar"] == "provisional"
    old_id = old_case.json()["id"]
    back = ("sla_started_at - interval '90 days'" if db_dialect(stack, "petition") == "postgresql"
            else "datetime(sla_started_at, '-90 days')")
    asyncio.run(service_db(stack, "petition", f"UPDATE petitions SET sla_started_at = {back} WHERE id = '{old_id}'"))

    # Ops load the notice.
    loaded = ops.put(f"/v1/calendar/years/{year}", json=notice(year, [extra]))
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["source"] == "notice" and loaded.json()["version"] == 1
    assert loaded.json()["notice"]["number"] == f"国办发明电〔{year - 1}〕99号（测试）"

    # The case's due date moves one working day later, on the official calendar.
    new_last = official.add_workdays(now, days)
    assert new_last == official.next_workday(target) > target
    def moved():
        got = petition_ops.get(f"/v1/petitions/{pid}").json()
        return got if got["sla"]["calendar"] == "official" else None
    got = eventually(moved)
    assert got["sla"]["due_at"].startswith((new_last + timedelta(days=1)).isoformat())
    timeline = petition_ops.get(f"/v1/petitions/{pid}/timeline").json()["items"]
    [entry] = [e for e in timeline if e["action"] == "sla_recomputed"]
    assert f"{target.isoformat()} → {new_last.isoformat()}" in entry["note"] and "99号" in entry["note"]
    tracked = public.get(f"/v1/petitions/track/{code}").json()
    assert tracked["sla"]["due_at"] == got["sla"]["due_at"] and tracked["sla"]["calendar"] == "official"
    assert [e["action"] for e in tracked["timeline"]][-1] == "sla_recomputed"
    assert new_last.isoformat() in tracked["timeline"][-1]["note"]
    # Its timers: one warning and one breach pending, at the new instants.
    timers = asyncio.run(service_db(stack, "petition", "SELECT kind, due_at, fired_at FROM petition_timers "
                                    f"WHERE petition_id = '{pid}' ORDER BY kind"))
    assert [(k, f) for k, _, f in timers] == [("breach", None), ("warning", None)]
    assert [instant(d) for _, d, _ in timers] == [instant(got["sla"]["due_at"]), instant(got["sla"]["warn_at"])]
    # The case that started long ago: recounted once, then its warning and breach fired once each.
    def old_fired():
        actions = [e["action"] for e in petition_ops.get(f"/v1/petitions/{old_id}/timeline").json()["items"]]
        return actions if "sla_breach" in actions and "sla_warning" in actions else None
    eventually(old_fired)
    assert petition_ops.get(f"/v1/petitions/{old_id}").json()["sla"]["overdue"] is True
    # The filing too, with an entry in the account's history.
    def filing_moved():
        f = [f for f in ops.get("/v1/filings?pending=true").json()["items"] if f["account_id"] == acc["id"]][0]
        return f if f["calendar"] == "official" else None
    filing = eventually(filing_moved)
    new_due = official.add_workdays(opened_on, 10)
    assert filing["due_on"] == new_due.isoformat() and new_due == official.next_workday(filing_due)
    account = ops.get(f"/v1/accounts/{acc['id']}").json()
    assert account["filing_due"] == new_due.isoformat() and account["filing_calendar"] == "official"
    steps = [s for s in ops.get(f"/v1/accounts/{acc['id']}/history").json()["items"]
             if s["action"] == "deadline_recomputed"]
    assert len(steps) == 1 and steps[0]["data"]["from"] == filing_due.isoformat()
    assert steps[0]["data"]["to"] == new_due.isoformat()

    assert grpc_view(stack, code, acc["id"]) == ("official", "official", "official")
    for service in ("petition", "account"):
        eventually(lambda: value(scrape(stack, service), "govmedia_calendar_provisional_deadlines") == 0)
        assert value(scrape(stack, service), "govmedia_calendar_provisional_first_due_days") == -1

    # Loading the same notice again changes nothing; a new complaint is official at once.
    again = ops.put(f"/v1/calendar/years/{year}", json=notice(year, [extra]))
    assert again.status_code == 200 and again.json()["version"] == 1
    fresh = public.post("/v1/petitions", json={**COMPLAINT, "contact": {"name": "赵六", "phone": "13600005678"}}).json()
    assert fresh["sla"]["calendar"] == "official"
    assert fresh["sla"]["due_at"].startswith((new_last + timedelta(days=1)).isoformat())
    versions = ops.get(f"/v1/calendar/years/{year}/versions").json()["items"]
    assert len(versions) == 1 and versions[0]["loaded_by"]
    # A replica started after the notice counts on it from its first request.
    later = stack.add_replica("petition")
    late = httpx.Client(base_url=later.base_url, timeout=15).post(
        "/v1/petitions", json={**COMPLAINT, "contact": {"name": "孙八", "phone": "13400001357"}})
    assert late.status_code == 201, late.text
    assert late.json()["sla"]["calendar"] == "official" and late.json()["sla"]["due_at"] == fresh["sla"]["due_at"]

    # One event each, on the bus.
    recomputed = asyncio.run(bus_messages(stack, "govmedia.petition.sla.recomputed", "GOVMEDIA_PETITION"))
    assert sorted(ev.DeadlineRecomputed.FromString(m.data).about_id for m in recomputed) == sorted([pid, old_id])
    filed = asyncio.run(bus_messages(stack, "govmedia.account.filing.recomputed", "GOVMEDIA_ACCOUNT"))
    assert len(filed) == 1
    for case, fired in ((pid, 0), (old_id, 1)):
        actions = Counter(e["action"] for e in petition_ops.get(f"/v1/petitions/{case}/timeline").json()["items"])
        assert (actions["sla_recomputed"], actions["sla_warning"], actions["sla_breach"]) == (1, fired, fired)

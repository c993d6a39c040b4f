"""Account activity with the account and dispatch services as real processes: a publish
acknowledged by a webhook client becomes the account's last publication and counts in its
month; a redelivered acknowledgement counts once; the sleeping-account ladder (10 days the
editor-in-chief, 12 the principal, 14 dormant) is announced on the bus once per silence and
cleared by a new publication; only the unit and those who read every unit may look.

Old publications are made by publishing dispatch's own event with an old acknowledged_at
straight to JetStream; later days by restarting the account service with its clock moved."""
from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import nats
import pytest
from govmedia.events.v1 import events_pb2 as ev

from govmedia_kit.db import new_id
from tests.helpers import assert_error, client, eventually, login
from tests.test_dispatch import (
    FAST_RETRIES,
    approve,
    client_token,
    demo_unit,
    publish,
    register,
    wait_known,
    webhook,
)

SERVICES = ("account", "dispatch")
ACKED = "govmedia.dispatch.deliveries.acknowledged"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def stack(stack_factory, db_backend):
    # the daily watch, quickly
    return stack_factory(db_backend, only=SERVICES, env={**FAST_RETRIES, "ACCOUNT_ACTIVITY_CHECK_INTERVAL_S": "0.3"})




def acknowledged(stack, account_id: str, item_id: str, at: datetime, event_id: str | None = None,
                 msg_id: str | None = None, kind: str = "publish") -> str:
    """Dispatch's event, as if the account had acknowledged a publish at `at`."""
    msg = ev.DeliveriesAcknowledged(deliveries=[ev.AcknowledgedDelivery(
        delivery_id=new_id(), account_id=account_id, item_id=item_id, version=1, kind=kind,
        acknowledged_at=at.isoformat().replace("+00:00", "Z"))])
    return publish(stack, ACKED, msg, account_id, event_id=event_id, msg_id=msg_id)


def dormancy_events(stack) -> list[tuple[str, str, int]]:
    """Every dormancy step announced so far: (account, stage, silent days)."""
    async def go():
        nc = await nats.connect(stack.nats_url)
        try:
            sub = await nc.jetstream().pull_subscribe("govmedia.account.activity.dormancy", durable=None,
                                                      stream="GOVMEDIA_ACCOUNT")
            got = []
            while True:
                try:
                    got += await sub.fetch(100, timeout=0.5)
                except Exception:
                    return got
        finally:
            await nc.close()

    out = []
    for m in asyncio.run(go()):
        d = ev.AccountDormancy()
        d.ParseFromString(m.data)
        assert m.headers["ce-subject"] == d.account_id
        out.append((d.account_id, d.stage, d.silent_days))
    return out


def steps(events, account_id: str) -> list[str]:
    return [stage for a, stage, _ in events if a == account_id]


def this_month() -> str:
    return datetime.now(SHANGHAI).strftime("%Y-%m")


def monthly(activity: dict) -> dict[str, int]:
    return {m["month"]: m["items"] for m in activity["monthly"]}


def test_webhook_publish_counts_once_and_who_may_look(stack, receiver):
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    editor, regulator, supervisor = (client(stack, "account", login(stack, n)) for n in ("editor", "regulator",
                                                                                          "supervisor"))
    unit = demo_unit(ops)
    hook = webhook(ops, receiver, unit["id"], "hook")
    wait_known(disp, [hook])

    # Registered today, never published: silent since it entered the ledger.
    before = editor.get(f"/v1/accounts/{hook}/activity")
    assert before.status_code == 200, before.text
    before = before.json()
    assert before["last_published_at"] is None and before["silent_days"] == 0 and before["stage"] is None
    assert len(before["monthly"]) == 12 and before["monthly"][-1] == {"month": this_month(), "items": 0}

    # A publish acknowledged by the client's webhook (2xx) reaches the account service.
    item = new_id()
    t0 = datetime.now(timezone.utc)
    approve(stack, item, unit["id"], accounts=[hook])
    eventually(lambda: receiver.got("hook"), timeout=30)

    def published():
        got = editor.get(f"/v1/accounts/{hook}/activity").json()
        return got if got["last_published_at"] else None
    got = eventually(published, timeout=30)
    at = datetime.fromisoformat(got["last_published_at"].replace("Z", "+00:00"))
    assert t0 - timedelta(seconds=5) <= at <= datetime.now(timezone.utc) + timedelta(seconds=5)
    assert got["silent_days"] == 0 and monthly(got)[this_month()] == 1 and got["dormant"] is False

    # A new version of the same item is the same item; the same event delivered again (a new
    # JetStream message, the same event id) and another event repeating it count nothing more.
    approve(stack, item, unit["id"], version=2, accounts=[hook])
    eventually(lambda: len(receiver.got("hook")) >= 2, timeout=30)
    same = new_id()
    for msg_id in ("copy-1", "copy-2"):
        acknowledged(stack, hook, item, at, event_id=same, msg_id=f"{same}-{msg_id}")
    acknowledged(stack, hook, item, at)
    # a kill is not a publication
    acknowledged(stack, hook, new_id(), datetime.now(timezone.utc), kind="kill")
    # an older publication in an earlier month counts there and leaves the last one alone
    old = datetime.now(timezone.utc) - timedelta(days=40)
    old_item = new_id()
    acknowledged(stack, hook, old_item, old)
    old_month = old.astimezone(SHANGHAI).strftime("%Y-%m")

    def settled():
        r = editor.get(f"/v1/accounts/{hook}/activity").json()
        return r if monthly(r).get(old_month) == 1 else None
    got = eventually(settled, timeout=30)
    time.sleep(1.5)  # let the repeats (published before the old one) all be applied
    got = editor.get(f"/v1/accounts/{hook}/activity").json()
    counts = monthly(got)
    assert counts[this_month()] == 1 and counts[old_month] == 1 and sum(counts.values()) == 2, counts
    # the last publication is version 2's acknowledgement, not the old item's
    assert datetime.fromisoformat(got["last_published_at"].replace("Z", "+00:00")) >= at
    assert got["silent_days"] == 0

    # Who may look: the unit's people and those who read every unit; nobody else.
    assert regulator.get(f"/v1/accounts/{hook}/activity").status_code == 200
    assert supervisor.get(f"/v1/accounts/{hook}/activity").status_code == 200
    province = ops.get("/v1/regions").json()["items"][0]["id"]
    other = ops.post("/v1/units", json={"name": "示范市政府办", "region_id": province, "kind": "government"})
    assert other.status_code == 201, other.text
    made = ops.post("/v1/users", json={"username": "other-editor", "password": "long-enough-pw", "unit_id":
                                       other.json()["id"], "roles": ["editor", "principal"]})
    assert made.status_code == 201, made.text
    outsider = client(stack, "account", login(stack, "other-editor", "long-enough-pw"))
    assert_error(outsider.get(f"/v1/accounts/{hook}/activity"), 403, "other_unit")
    assert_error(outsider.get("/v1/activity/dormant"), 403, "role_required")
    assert_error(editor.get("/v1/activity/dormant"), 403, "role_required")
    assert_error(client(stack, "account", login(stack, "reviewer3")).get("/v1/activity/dormant"), 403,
                 "role_required")
    assert_error(client(stack, "account").get(f"/v1/accounts/{hook}/activity"), 401, "unauthenticated")
    app = register(ops, unit["id"], "app-activity", {"mode": "stream"}, platform="app")
    assert_error(client(stack, "account", client_token(stack, app)).get(f"/v1/accounts/{hook}/activity"), 403,
                 "client_not_allowed")
    assert_error(ops.get("/v1/accounts/nope/activity"), 404, "account_not_found")
    assert supervisor.get("/v1/activity/dormant").status_code == 200


def test_dormancy_ladder_once_per_silence_and_reset(stack, receiver):
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    regulator = client(stack, "account", login(stack, "regulator"))
    unit = demo_unit(ops)
    nine = register(ops, unit["id"], "nine", {"mode": "stream"}, platform="app")["id"]
    ten = register(ops, unit["id"], "ten", {"mode": "stream"}, platform="app")["id"]
    fourteen = webhook(ops, receiver, unit["id"], "fourteen")
    wait_known(disp, [fourteen])

    now = datetime.now(timezone.utc)
    acknowledged(stack, nine, new_id(), now - timedelta(days=9))
    acknowledged(stack, ten, new_id(), now - timedelta(days=10))
    acknowledged(stack, fourteen, new_id(), now - timedelta(days=14))

    # 10 days: the editor-in-chief is warned; 14 days: every step on the way up, then dormant.
    def first_steps():
        events = dormancy_events(stack)
        return events if len(steps(events, fourteen)) == 3 and steps(events, ten) else None
    events = eventually(first_steps, timeout=30)
    assert steps(events, ten) == ["warn_chief_editor"]
    assert steps(events, fourteen) == ["warn_chief_editor", "warn_principal", "dormant"]
    assert steps(events, nine) == []
    assert {d for a, _, d in events if a == fourteen} == {14}

    got = regulator.get(f"/v1/accounts/{fourteen}/activity").json()
    assert got["stage"] == "dormant" and got["dormant"] and got["dormant_since"] and got["silent_days"] == 14
    assert got["status"] == "active"  # a flag, not a lifecycle state
    assert regulator.get(f"/v1/accounts/{nine}/activity").json()["stage"] is None
    listed = regulator.get("/v1/activity/dormant").json()
    assert {e["account_id"]: e["stage"] for e in listed["items"]} == {ten: "warn_chief_editor", fourteen: "dormant"}
    first = regulator.get("/v1/activity/dormant", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    rest = regulator.get("/v1/activity/dormant", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert len(rest["items"]) == 1 and rest["items"][0]["account_id"] != first["items"][0]["account_id"]
    dormant_only = regulator.get("/v1/activity/dormant", params={"stage": "dormant"}).json()["items"]
    assert [e["account_id"] for e in dormant_only] == [fourteen] and dormant_only[0]["dormant"]

    # The people on the ladder are told: the editor-in-chief and the principal of the unit
    # (reviewer3 is both), and at 14 days the regulator; an editor is not.
    leader = client(stack, "account", login(stack, "reviewer3"))
    told = lambda who: sorted((n["kind"], n["account_id"]) for n in who.get("/v1/notices").json()["items"])  # noqa: E731
    assert told(leader) == sorted([("dormancy.warn_chief_editor", ten), ("dormancy.warn_chief_editor", fourteen),
                                   ("dormancy.warn_principal", fourteen), ("dormancy.dormant", fourteen)])
    assert told(regulator) == [("dormancy.dormant", fourteen)]
    assert client(stack, "account", login(stack, "editor")).get("/v1/notices").json()["items"] == []
    notice = leader.get("/v1/notices").json()["items"][0]
    assert "天未更新" in notice["title"] and notice["unit_id"] == unit["id"]

    # Many passes of the watch later, nothing is announced twice.
    time.sleep(2)
    assert sorted(dormancy_events(stack)) == sorted(events)
    assert len(told(leader)) == 4

    # Two days later: 11 days warns the editor-in-chief, 12 the principal; the dormant one
    # hears nothing more.
    stack.services["account"].env["ACCOUNT_ACTIVITY_CLOCK_OFFSET_DAYS"] = "2"
    stack.restart("account")

    def later_steps():
        events = dormancy_events(stack)
        return events if steps(events, nine) and len(steps(events, ten)) == 2 else None
    events = eventually(later_steps, timeout=30)
    assert steps(events, nine) == ["warn_chief_editor"]
    assert steps(events, ten) == ["warn_chief_editor", "warn_principal"]
    assert steps(events, fourteen) == ["warn_chief_editor", "warn_principal", "dormant"]
    assert regulator.get(f"/v1/accounts/{ten}/activity").json()["silent_days"] == 12
    assert len(told(leader)) == 6  # nine's first warning and ten's second

    # The dormant account publishes again (a real push, acknowledged by its webhook): cleared.
    approve(stack, new_id(), unit["id"], accounts=[fourteen])

    def cleared():
        r = regulator.get(f"/v1/accounts/{fourteen}/activity").json()
        return r if r["stage"] is None else None
    got = eventually(cleared, timeout=30)
    assert got["dormant"] is False and got["dormant_since"] is None and got["silent_days"] == 2
    back_then = (now - timedelta(days=14)).astimezone(SHANGHAI).strftime("%Y-%m")
    assert sum(monthly(got).values()) == 2 and monthly(got)[back_then] >= 1
    listed = regulator.get("/v1/activity/dormant").json()["items"]
    assert fourteen not in {e["account_id"] for e in listed}
    time.sleep(2)
    assert steps(dormancy_events(stack), fourteen) == ["warn_chief_editor", "warn_principal", "dormant"]


def test_urgent_review_reminders_reach_the_reviewers_inbox(stack):
    """The review service's overdue event (published here as it would) becomes notices: the
    level's holders are reminded, then the next level up is told; each once."""
    ops = client(stack, "account", login(stack, "ops"))
    unit = demo_unit(ops)
    review_id = new_id()

    def overdue(stage: str) -> None:
        publish(stack, "govmedia.review.level.overdue", ev.ReviewLevelOverdue(
            review_id=review_id, item_id=new_id(), unit_id=unit["id"], title="暴雨红色预警", level=1,
            holder_roles=["section_head"], next_roles=["deputy"], due_at="2026-11-23T08:30:00Z", stage=stage),
            review_id)

    overdue("reminder")
    overdue("reminder")  # told once, however often it is said
    section_head, deputy = (client(stack, "account", login(stack, n)) for n in ("reviewer1", "reviewer2"))
    reminded = eventually(lambda: section_head.get("/v1/notices").json()["items"])
    assert [n["kind"] for n in reminded] == ["review.reminder"] and "暴雨红色预警" in reminded[0]["title"]
    assert deputy.get("/v1/notices").json()["items"] == []
    overdue("escalated")
    told = eventually(lambda: deputy.get("/v1/notices").json()["items"])
    assert [n["kind"] for n in told] == ["review.escalated"]
    time.sleep(0.5)
    assert len(section_head.get("/v1/notices").json()["items"]) == 1


def test_petition_sla_alerts_reach_handlers_leaders_and_supervisors(stack):
    """The petition service's SLA alerts (published here as it would) become notices for the
    roles each names: the unit's handlers and leaders, the region's supervisors; each once."""
    ops = client(stack, "account", login(stack, "ops"))
    unit = demo_unit(ops)
    petition_id = new_id()

    def alert(kind: str, roles: list[str]) -> None:
        publish(stack, f"govmedia.petition.sla.{kind}", ev.PetitionSlaAlert(
            petition_id=petition_id, kind=kind, category="complaint", stage="handling", unit_id=unit["id"],
            title="小区路灯长期不亮", due_at="2026-11-23T24:00:00+08:00", fired_at="2026-11-23T19:12:00+08:00",
            notify_roles=roles), petition_id)

    handler, supervisor, principal = (client(stack, "account", login(stack, n))
                                      for n in ("handler", "supervisor", "reviewer3"))
    alert("warning", ["handler"])
    alert("warning", ["handler"])  # told once, however often it is said
    warned = eventually(lambda: handler.get("/v1/notices").json()["items"])
    assert [n["kind"] for n in warned] == ["petition.warning"] and "小区路灯长期不亮" in warned[0]["title"]
    assert supervisor.get("/v1/notices").json()["items"] == []
    alert("breached", ["handler", "principal", "supervisor"])
    assert [n["kind"] for n in eventually(lambda: supervisor.get("/v1/notices").json()["items"])] == [
        "petition.breached"]
    assert "petition.breached" in [n["kind"] for n in principal.get("/v1/notices").json()["items"]]
    time.sleep(0.5)
    assert len(handler.get("/v1/notices").json()["items"]) == 2

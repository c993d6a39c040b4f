"""The petition service as a real process (with account for tokens): public intake with SLA
clocks, the back office's read views with masking, tracking, bad input, gRPC, the event."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

import grpc
import nats
import pytest

from govmedia.events.v1 import events_pb2 as ev
from govmedia.petition.v1 import petition_pb2 as pb
from govmedia.petition.v1 import petition_pb2_grpc as pb_grpc
from govmedia_kit import workdays
from tests.helpers import assert_error, client, login

MOBILE = "138 1234 5678"
COMPLAINT = {
    "category": "complaint", "title": "小区噪音扰民", "content": "夜间施工至凌晨两点，多次反映无果。",
    "channel": "web", "contact": {"name": "张三", "phone": MOBILE}, "location": "示范市示范区幸福路 1 号",
}
CONSULTATION = {"category": "consultation", "title": "社保卡补办", "content": "社保卡丢失后在哪里补办？",
                "channel": "app"}


@pytest.fixture
def stack(calendar_file, stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "petition"))


def expected_sla(created_at: str, category: str) -> tuple[str, str]:
    """Due and warning instants recomputed from the kit calendar, as the service must: the
    warning at 80 % of the period (each counted day 24 hours), at most at the deadline."""
    received = datetime.fromisoformat(created_at)
    received_on = received.astimezone(workdays.SHANGHAI).date()
    if category == "petition":
        last = workdays.calendar_days_deadline(received_on, 15)
        warn = workdays.end_of_day(received_on + timedelta(days=12))  # 12 of 15 calendar days
    else:
        n = {"consultation": 2, "help": 10, "suggestion": 10}.get(category, 15)
        last = workdays.add_workdays(received_on, n)
        whole, rest = divmod(round(0.8 * n * 86400), 86400)
        if rest:
            warn = workdays.end_of_day(workdays.add_workdays(received_on, whole)) + timedelta(seconds=rest)
        else:
            warn = workdays.end_of_day(workdays.add_workdays(received_on, whole))
    due = workdays.end_of_day(last).astimezone(workdays.SHANGHAI)
    warn = min(max(warn, received), due).astimezone(workdays.SHANGHAI)
    return due.isoformat(), warn.isoformat()


def test_intake_sla_and_back_office_views(stack):
    public = client(stack, "petition")
    handler = client(stack, "petition", login(stack, "handler"))
    supervisor = client(stack, "petition", login(stack, "supervisor"))
    ops = client(stack, "petition", login(stack, "ops"))
    editor = client(stack, "petition", login(stack, "editor"))

    created = public.post("/v1/petitions", json=COMPLAINT)
    assert created.status_code == 201, created.text
    receipt = created.json()
    assert receipt["status"] == "received" and len(receipt["tracking_code"]) == 12
    assert set(receipt["sla"]) >= {"policy", "stage", "due_at", "warn_at", "paused", "time_left_s", "overdue"}
    assert receipt["sla"]["policy"] == "gd12345.complaint.15wd" and receipt["sla"]["stage"] == "handling"
    assert receipt["sla"]["due_at"].endswith("T00:00:00+08:00") and receipt["sla"]["paused"] is False
    assert (receipt["sla"]["due_at"], receipt["sla"]["warn_at"]) == expected_sla(receipt["created_at"], "complaint")
    assert "phone" not in created.text and "5678" not in created.text

    consult = public.post("/v1/petitions", json=CONSULTATION).json()
    assert consult["sla"]["policy"] == "gd12345.consultation.2wd"
    assert (consult["sla"]["due_at"], consult["sla"]["warn_at"]) == expected_sla(consult["created_at"], "consultation")
    formal = public.post("/v1/petitions", json={**COMPLAINT, "category": "petition", "channel": "app",
                                                "contact": {"name": "李四", "phone": "020-8765 4321"}}).json()
    assert formal["sla"]["policy"] == "xinfang2022.acceptance.15d" and formal["sla"]["stage"] == "acceptance"
    assert (formal["sla"]["due_at"], formal["sla"]["warn_at"]) == expected_sla(formal["created_at"], "petition")

    # One petition: handler and ops see the contact, the supervisor sees it masked.
    one = handler.get(f"/v1/petitions/{receipt['id']}").json()
    assert one["contact"] == {"name": "张三", "phone": "13812345678"}
    sla_fixed = lambda sla: {k: v for k, v in sla.items() if k != "time_left_s"}  # noqa: E731
    assert one["title"] == COMPLAINT["title"] and sla_fixed(one["sla"]) == sla_fixed(receipt["sla"])
    assert "tracking_code" not in one
    # Ops do not handle cases: masked (issue 6: masked for every role that does not handle the case).
    assert ops.get(f"/v1/petitions/{formal['id']}").json()["contact"]["phone"] == "020-****4321"
    assert handler.get(f"/v1/petitions/{formal['id']}").json()["contact"]["phone"] == "020-87654321"
    masked = supervisor.get(f"/v1/petitions/{receipt['id']}").json()
    assert masked["contact"] == {"name": "张*", "phone": "138****5678"}
    assert supervisor.get(f"/v1/petitions/{formal['id']}").json()["contact"]["phone"] == "020-****4321"
    assert handler.get(f"/v1/petitions/{consult['id']}").json()["contact"] is None

    # Lists: masked for everyone, filtered, paged.
    listed = handler.get("/v1/petitions").json()
    assert [p["id"] for p in listed["items"]] == [receipt["id"], consult["id"], formal["id"]]
    assert "13812345678" not in str(listed) and listed["items"][0]["contact"]["phone"] == "138****5678"
    assert [p["id"] for p in supervisor.get("/v1/petitions", params={"category": "complaint"}).json()["items"]] \
        == [receipt["id"]]
    assert len(ops.get("/v1/petitions", params={"status": "received"}).json()["items"]) == 3
    first = handler.get("/v1/petitions", params={"limit": 2}).json()
    rest = handler.get("/v1/petitions", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [p["id"] for p in first["items"] + rest["items"]] == [p["id"] for p in listed["items"]]
    assert rest["next_cursor"] is None
    assert_error(handler.get("/v1/petitions", params={"status": "lost"}), 422, "validation_failed")
    assert_error(handler.get("/v1/petitions", params={"category": "gossip"}), 422, "validation_failed")

    # Refusals: the wrong role, no token, an unknown id.
    assert_error(editor.get("/v1/petitions"), 403, "role_required")
    assert_error(editor.get(f"/v1/petitions/{receipt['id']}"), 403, "role_required")
    assert_error(editor.get(f"/v1/petitions/{receipt['id']}/timeline"), 403, "role_required")
    assert_error(public.get("/v1/petitions"), 401, "unauthenticated")
    assert_error(public.get(f"/v1/petitions/{receipt['id']}"), 401, "unauthenticated")
    assert_error(handler.get("/v1/petitions/nope"), 404, "petition_not_found")

    # The timeline starts with the intake.
    timeline = supervisor.get(f"/v1/petitions/{receipt['id']}/timeline").json()["items"]
    assert len(timeline) == 1
    assert timeline[0]["actor"] == "citizen" and timeline[0]["action"] == "received" and "网站" in timeline[0]["note"]
    assert timeline[0]["at"] == receipt["created_at"]

    # Public tracking: status and deadline, nothing about the person or the text.
    tracked = public.get(f"/v1/petitions/track/{receipt['tracking_code']}")
    assert tracked.status_code == 200, tracked.text
    body = tracked.json()
    assert {k: body[k] for k in ("tracking_code", "status", "category", "created_at")} == {
        "tracking_code": receipt["tracking_code"], "status": "received", "category": "complaint",
        "created_at": receipt["created_at"]}
    assert sla_fixed(body["sla"]) == sla_fixed(receipt["sla"]) and body["answer"] is None
    assert "contact" not in body and "张三" not in tracked.text and "5678" not in tracked.text
    assert public.get(f"/v1/petitions/track/{receipt['tracking_code'].lower()}").status_code == 200
    assert_error(public.get("/v1/petitions/track/ZZZZZZZZZZZZ"), 404, "petition_not_found")
    assert_error(public.get("/v1/petitions/track/x"), 404, "petition_not_found")

    # Contact data never reaches the log.
    log = stack.services["petition"].log_path.read_text()
    assert "13812345678" not in log and "1234 5678" not in log and "张三" not in log and "87654321" not in log


def test_bad_input_is_refused_and_changes_nothing(stack):
    public = client(stack, "petition")
    handler = client(stack, "petition", login(stack, "handler"))
    without = lambda key: {k: v for k, v in COMPLAINT.items() if k != key}  # noqa: E731
    cases = [
        (without("title"), "validation_failed"),
        (without("category"), "validation_failed"),
        (without("channel"), "validation_failed"),
        ({**COMPLAINT, "title": "   "}, "validation_failed"),
        ({**COMPLAINT, "title": 123}, "validation_failed"),
        ({**COMPLAINT, "contact": "张三 13812345678"}, "validation_failed"),
        ({**COMPLAINT, "category": "gossip"}, "validation_failed"),
        ({**COMPLAINT, "channel": "pigeon"}, "validation_failed"),
        ({**COMPLAINT, "priority": "high"}, "validation_failed"),
        ({**COMPLAINT, "contact": {"name": "张三"}}, "validation_failed"),
        ({**COMPLAINT, "content": "x" * 5001}, "validation_failed"),
        (without("contact"), "contact_required"),
        ({**COMPLAINT, "category": "report", "contact": None}, "contact_required"),
        ({**COMPLAINT, "category": "petition", "contact": None}, "contact_required"),
        ({**COMPLAINT, "contact": {"name": "张三", "phone": "12345"}}, "invalid_phone"),
        ({**COMPLAINT, "contact": {"name": "张三", "phone": "23812345678"}}, "invalid_phone"),
        ({**COMPLAINT, "contact": {"name": "张三", "phone": "020-1234"}}, "invalid_phone"),
        ({**CONSULTATION, "contact": {"name": "王五", "phone": "not a phone"}}, "invalid_phone"),
    ]
    for body, code in cases:
        answer = assert_error(public.post("/v1/petitions", json=body), 422, code)
        assert "12345678" not in str(answer["error"]["details"])  # the phone is not echoed
    assert_error(public.post("/v1/petitions", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "validation_failed")
    # The front door (govmedia_kit/guard.py): size, type, encoding and nesting.
    as_json = {"content-type": "application/json"}
    assert_error(public.post("/v1/petitions", json={**COMPLAINT, "content": "长" * 400_000}), 413, "payload_too_large")
    assert_error(public.post("/v1/petitions", content=iter([b'{"title": "', b"x" * (2 << 20), b'"}']),
                             headers=as_json), 413, "payload_too_large")  # chunked, no Content-Length
    assert_error(public.post("/v1/petitions", content="标题", headers={"content-type": "text/plain"}), 415,
                 "unsupported_media_type")
    bad_utf8 = ('{"category": "complaint", "title": "').encode() + b"\xff\xfe" + b'", "content": "x", "channel": "web"}'
    assert_error(public.post("/v1/petitions", content=bad_utf8, headers=as_json), 400, "invalid_encoding")
    assert_error(public.post("/v1/petitions", content=b"[" * 5000 + b"]" * 5000, headers=as_json), 400, "json_too_deep")
    assert_error(public.post("/v1/petitions", content=b'{"a": ' * 100_000, headers=as_json), 400, "json_too_deep")
    assert handler.get("/v1/petitions").json()["items"] == []
    # A consultation may come without contact; a landline is a valid phone.
    assert public.post("/v1/petitions", json=CONSULTATION).status_code == 201
    ok = public.post("/v1/petitions", json={**COMPLAINT, "contact": {"name": "赵六", "phone": "+86 755 8888 9999"}})
    assert ok.status_code == 201, ok.text
    assert handler.get(f"/v1/petitions/{ok.json()['id']}").json()["contact"]["phone"] == "0755-88889999"
    # (the same citizen on the same matter again would be linked, not counted: see test_petition_flow.py)
    assert len(handler.get("/v1/petitions").json()["items"]) == 2


def test_idempotent_intake_and_rate_limit(stack):
    public = client(stack, "petition")
    handler = client(stack, "petition", login(stack, "handler"))
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = public.post("/v1/petitions", json=CONSULTATION, headers=key)
    again = public.post("/v1/petitions", json=CONSULTATION, headers=key)
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert_error(public.post("/v1/petitions", json=CONSULTATION, headers={"Idempotency-Key": "1"}), 400,
                 "idempotency_key_too_short")
    assert len(handler.get("/v1/petitions").json()["items"]) == 1
    # 30 a minute per address, malformed submissions included; the replay above was not counted.
    # (GCRA: 30 at once, then one every two seconds; a slow machine may earn one or two more.)
    answers = []
    while 429 not in answers and len(answers) < 40:
        answers.append(public.post("/v1/petitions", json={}).status_code)
    assert answers[-1] == 429 and set(answers[:-1]) == {422} and 29 <= len(answers) - 1 <= 31, answers
    limited = public.post("/v1/petitions", json=CONSULTATION)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1  # RFC 6585
    assert len(handler.get("/v1/petitions").json()["items"]) == 1
    # Staff reads and other addresses' quota are not affected.
    assert handler.get("/v1/petitions").status_code == 200


async def test_grpc_intake_and_reads_and_the_event(stack):
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe("govmedia.petition.petition.received", stream="GOVMEDIA_PETITION")
    try:
        async with grpc.aio.insecure_channel(stack.services["petition"].grpc_target) as channel:
            stub = pb_grpc.PetitionServiceStub(channel)
            receipt = await stub.CreatePetition(pb.CreatePetitionRequest(
                category="report", title="违规占道经营", content="早市摊位占满人行道。", channel="app",
                contact=pb.Contact(name="钱七", phone="13900001111"), location="示范路"))
            assert receipt.status == "received" and len(receipt.tracking_code) == 12
            assert receipt.sla.policy == "gd12345.report.15wd"
            assert (receipt.sla.due_at, receipt.sla.warn_at) == expected_sla(receipt.created_at, "report")

            for request, code in [
                (pb.CreatePetitionRequest(category="gossip", title="t", content="c", channel="web"), "validation_failed"),
                (pb.CreatePetitionRequest(category="complaint", title="t", content="c", channel="web"),
                 "contact_required"),
                (pb.CreatePetitionRequest(category="help", title="t", content="c", channel="web",
                                          contact=pb.Contact(name="a", phone="110")), "invalid_phone"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CreatePetition(request)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(err.value.trailing_metadata() or ())["error-code"] == code

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListPetitions(pb.ListPetitionsRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

            def md(user: str):
                return (("authorization", f"Bearer {login(stack, user)}"),)

            handler, supervisor, editor = md("handler"), md("supervisor"), md("editor")
            listed = await stub.ListPetitions(pb.ListPetitionsRequest(category="report"), metadata=handler)
            assert [p.id for p in listed.items] == [receipt.id] and listed.items[0].contact.phone == "139****1111"
            assert listed.items[0].tracking_code == ""
            one = await stub.GetPetition(pb.GetPetitionRequest(id=receipt.id), metadata=handler)
            assert one.contact.phone == "13900001111" and one.contact.name == "钱七" and one.title == "违规占道经营"
            one = await stub.GetPetition(pb.GetPetitionRequest(id=receipt.id), metadata=supervisor)
            assert one.contact.phone == "139****1111"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetPetition(pb.GetPetitionRequest(id=receipt.id), metadata=editor)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListPetitions(pb.ListPetitionsRequest(status="lost"), metadata=handler)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Exactly one event (the refused submissions emitted nothing), without contact data.
        msgs = await sub.fetch(10, timeout=20)
        await asyncio.sleep(1)
        try:
            msgs += await sub.fetch(10, timeout=1)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            pass
        assert len(msgs) == 1
        event = ev.PetitionReceived.FromString(msgs[0].data)
        assert event.petition_id == receipt.id and event.category == "report" and event.channel == "app"
        assert event.due_at == receipt.sla.due_at and event.policy == receipt.sla.policy
        assert msgs[0].headers["ce-type"] == "govmedia.petition.petition.received"
        assert b"13900001111" not in msgs[0].data and "钱七".encode() not in msgs[0].data
    finally:
        await nc.close()

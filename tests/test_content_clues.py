"""News clues (报料) against real processes: the public intake and tracking (no sign-in,
rate-limited), the contact kept private (masked in lists, absent from the tracking answer and
the logs), triage by the unit's editors with reach, a clue turned into a draft, and gRPC."""
from __future__ import annotations

import asyncio

import grpc
import pytest

from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from tests.helpers import assert_error, client, eventually
from tests.test_content_review import People

PASSWORD = "clue-pass-2026"
PHONE, NAME = "13812348000", "张三丰"
# A small budget, so the limits are reached within the test (the rest of it stays under them).
LIMITS = {"CONTENT_CLUE_INTAKE_RATE_PER_MINUTE": "15", "CONTENT_CLUE_TRACK_RATE_PER_MINUTE": "20"}


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account", "content", "review"), env=LIMITS)


def clue(unit_id: str, **fields) -> dict:
    return {"unit_id": unit_id, "title": "某路段井盖缺失", "content": "人民路与解放路路口井盖缺失，夜间危险。",
            "location": "人民路与解放路路口", "contact": {"name": NAME, "phone": "138-1234-8000"}, **fields}


def submit_when_known(public, body: dict):
    """Submit once content's unit directory knows the unit (it learns units from events);
    polled slowly, since every try counts against the intake limit."""
    return eventually(lambda: (r := public.post("/v1/clues", json=body)).status_code == 201 and r, interval=0.5)


def test_clues_from_intake_to_draft(stack):
    people = People(stack)
    ops = people.account("ops")
    home = ops.get("/v1/units").json()["items"][0]
    city = ops.post("/v1/regions", json={"name": "报料市", "parent_id": home["region_id"], "level": "city"}).json()
    city_unit = ops.post("/v1/units", json={"name": "报料市融媒体中心", "region_id": city["id"]}).json()
    made = ops.post("/v1/users", json={"username": "clue-editor", "password": PASSWORD, "unit_id": city_unit["id"],
                                       "roles": ["editor"]})
    assert made.status_code == 201, made.text
    people.token("clue-editor", PASSWORD)
    public = client(stack, "content")

    # -- public intake: no token; the tracking code shown once; nothing stored for bad input
    first = submit_when_known(public, clue(home["id"]))
    receipt = first.json()
    assert set(receipt) == {"tracking_code", "status", "created_at"} and receipt["status"] == "new"
    code = receipt["tracking_code"]
    for body in (clue(home["id"], title="小区噪音扰民", contact=None),
                 clue(home["id"], location=None, contact={"name": "李四", "phone": "(020) 8234-5678"})):
        assert public.post("/v1/clues", json=body).status_code == 201
    submit_when_known(public, clue(city_unit["id"], title="报料市的线索"))
    for body, code_ in ((clue(home["id"], title=""), "validation_failed"),
                        (clue(home["id"], contact={"name": NAME, "phone": "12345"}), "invalid_phone"),
                        (clue(home["id"], secret="x"), "validation_failed"),
                        (clue("no-such-unit"), "unknown_unit")):
        assert_error(public.post("/v1/clues", json=body), 422, code_)
    assert_error(public.post("/v1/clues", json=clue(home["id"]), headers={"Idempotency-Key": "short"}), 400,
                 "idempotency_key_too_short")

    # -- tracking: the status and the unit, nothing about the citizen or the matter
    tracked = public.get(f"/v1/clues/track/{code.lower()[:4]}-{code[4:]}")
    assert tracked.status_code == 200, tracked.text
    assert set(tracked.json()) == {"tracking_code", "status", "unit_name", "created_at", "updated_at"}
    assert (tracked.json()["status"], tracked.json()["unit_name"]) == ("new", home["name"])
    assert PHONE not in tracked.text and "8000" not in tracked.text and NAME[0] not in tracked.text
    assert_error(public.get("/v1/clues/track/0000-0000-0000"), 404, "clue_not_found")
    assert_error(public.get("/v1/clues/track/not-a-code"), 404, "clue_not_found")

    # -- the unit's editors list them, contact masked; others see nothing of them
    editor, city_editor = people.content("editor"), people.content("clue-editor")
    listed = editor.get("/v1/clues").json()["items"]
    assert [c["status"] for c in listed] == ["new"] * 3
    assert listed[0]["contact"] == {"name": "张**", "phone": "138****8000"} and not listed[0]["contact_revealed"]
    assert listed[1]["contact"] is None and listed[2]["contact"]["phone"] == "020-****5678"
    assert "tracking_code" not in listed[0] and PHONE not in editor.get("/v1/clues").text
    clue_id, declined_id, duplicate_id = (c["id"] for c in listed)
    assert [c["title"] for c in city_editor.get("/v1/clues").json()["items"]] == ["报料市的线索"]
    assert len(people.content("ops").get("/v1/clues").json()["items"]) == 4  # the province's ops reach every unit
    assert_error(people.content("reviewer1").get("/v1/clues"), 403, "role_required")
    assert_error(people.content("handler").get(f"/v1/clues/{clue_id}"), 403, "role_required")
    assert_error(city_editor.get(f"/v1/clues/{clue_id}"), 403, "other_unit")
    assert_error(public.get("/v1/clues"), 401, "unauthenticated")
    assert_error(editor.get("/v1/clues", params={"status": "open"}), 422, "validation_failed")

    # one clue: unmasked for the unit's editors, masked for ops
    one = editor.get(f"/v1/clues/{clue_id}").json()
    assert one["contact"] == {"name": NAME, "phone": PHONE} and one["contact_revealed"]
    assert [(s["action"], s["actor_id"]) for s in one["steps"]] == [("received", "citizen")]
    assert people.content("reviewer3").get(f"/v1/clues/{clue_id}").json()["contact"]["phone"] == PHONE
    assert people.content("ops").get(f"/v1/clues/{clue_id}").json()["contact"]["phone"] == "138****8000"
    assert_error(editor.get("/v1/clues/nope"), 404, "clue_not_found")

    # -- triage: accept, decline with a reason, mark a duplicate; refusals change nothing
    triage = lambda who, cid, **body: people.content(who).post(f"/v1/clues/{cid}/triage", json=body)
    assert_error(triage("editor", declined_id, decision="decline"), 422, "reason_required")
    assert_error(triage("editor", declined_id, decision="decline", reason="  "), 422, "reason_required")
    assert_error(triage("editor", duplicate_id, decision="duplicate"), 422, "duplicate_of_required")
    assert_error(triage("editor", duplicate_id, decision="duplicate", duplicate_of=duplicate_id), 422,
                 "invalid_duplicate")
    assert_error(triage("editor", clue_id, decision="maybe"), 422, "validation_failed")
    assert_error(triage("clue-editor", clue_id, decision="accept"), 403, "other_unit")
    assert_error(triage("reviewer1", clue_id, decision="accept"), 403, "role_required")
    assert_error(people.content("editor").post(f"/v1/clues/{clue_id}/draft"), 409, "clue_not_accepted")
    assert len(editor.get("/v1/clues", params={"status": "new"}).json()["items"]) == 3
    accepted = triage("editor", clue_id, decision="accept")
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["status"] == "accepted" and accepted.json()["triaged_by"] and accepted.json()["triaged_at"]
    assert_error(triage("editor", clue_id, decision="decline", reason="再议"), 409, "clue_already_triaged")
    no = triage("reviewer3", declined_id, decision="decline", reason="不属于本单位职责范围")
    assert (no.json()["status"], no.json()["decline_reason"]) == ("declined", "不属于本单位职责范围")
    dup = triage("editor", duplicate_id, decision="duplicate", duplicate_of=clue_id)
    assert (dup.json()["status"], dup.json()["duplicate_of"]) == ("duplicate", clue_id)
    assert [c["id"] for c in editor.get("/v1/clues", params={"status": "declined"}).json()["items"]] == [declined_id]

    # -- an accepted clue becomes a draft of its unit, linked both ways
    assert_error(editor.post(f"/v1/clues/{declined_id}/draft"), 409, "clue_not_accepted")
    assert_error(editor.post(f"/v1/clues/{clue_id}/draft", json={"targets": {}}), 422, "validation_failed")
    drafted = editor.post(f"/v1/clues/{clue_id}/draft", json={"targets": {"platforms": ["app"]}})
    assert drafted.status_code == 201, drafted.text
    draft = drafted.json()
    assert (draft["title"], draft["body"], draft["clue_id"], draft["unit_id"], draft["status"]) == (
        "某路段井盖缺失", "人民路与解放路路口井盖缺失，夜间危险。", clue_id, home["id"], "draft")
    assert draft["targets"] == {"platforms": ["app"]} and drafted.headers["location"] == f"/v1/drafts/{draft['id']}"
    assert editor.get(f"/v1/drafts/{draft['id']}").json()["clue_id"] == clue_id
    assert_error(editor.post(f"/v1/clues/{clue_id}/draft"), 409, "clue_not_accepted")
    done = editor.get(f"/v1/clues/{clue_id}").json()
    assert (done["status"], done["draft_id"]) == ("drafted", draft["id"]) and done["drafted_by"] == draft["author_id"]
    assert [s["action"] for s in done["steps"]] == ["received", "accepted", "drafted"]
    assert all(s["actor_id"] == draft["author_id"] and s["at"] for s in done["steps"][1:])
    assert public.get(f"/v1/clues/track/{code}").json()["status"] == "drafted"

    # -- gRPC: public intake and tracking, the unit's triage and draft
    async def over_grpc():
        md = (("authorization", f"Bearer {people.token('editor')}"),)
        async with grpc.aio.insecure_channel(stack.services["content"].grpc_target) as channel:
            stub = cpb_grpc.ContentServiceStub(channel)
            got = await stub.SubmitClue(cpb.SubmitClueRequest(unit_id=home["id"], title="路灯不亮", content="东街路灯坏了",
                                                              contact=cpb.Contact(name="王五", phone="13900001111")))
            assert got.status == "new" and len(got.tracking_code) == 12
            status = await stub.TrackClue(cpb.TrackClueRequest(tracking_code=got.tracking_code))
            assert (status.status, status.unit_name) == ("new", home["name"])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SubmitClue(cpb.SubmitClueRequest(unit_id=home["id"], title="", content="x"))
            assert dict(err.value.trailing_metadata())["error-code"] == "validation_failed"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ListClues(cpb.ListCluesRequest())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            fresh = (await stub.ListClues(cpb.ListCluesRequest(status="new"), metadata=md)).items
            assert [c.title for c in fresh] == ["路灯不亮"] and fresh[0].contact.phone == "139****1111"
            full = await stub.GetClue(cpb.GetClueRequest(id=fresh[0].id), metadata=md)
            assert full.contact.phone == "13900001111" and full.contact_revealed and full.steps[0].action == "received"
            accepted = await stub.TriageClue(cpb.TriageClueRequest(id=full.id, decision="accept"), metadata=md)
            assert accepted.status == "accepted"
            draft = await stub.DraftFromClue(cpb.DraftFromClueRequest(id=full.id, title="东街路灯已报修"), metadata=md)
            assert (draft.fields.title, draft.fields.body, draft.clue_id) == ("东街路灯已报修", "东街路灯坏了", full.id)
    asyncio.run(over_grpc())

    # -- the rate limits: 429 with Retry-After, per client address
    for _ in range(40):
        r = public.post("/v1/clues", json=clue(home["id"]))
        if r.status_code == 429:
            break
        assert r.status_code == 201, r.text
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["details"]["retry_after"] >= 1
    for _ in range(40):
        r = public.get(f"/v1/clues/track/{code}")
        if r.status_code == 429:
            break
    assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1

    # the citizen's contact never reaches the logs
    logged = stack.services["content"].log_path.read_text(encoding="utf-8")
    assert PHONE not in logged and NAME not in logged and "13900001111" not in logged

"""The account service's gRPC API beyond tokens, organisation and registration: an account's
lifecycle, inspections, activity and sign-in, over real gRPC against the service as a real
process (SQLite and PostgreSQL); bad input refused with INVALID_ARGUMENT and nothing stored;
and the authorisation matrix of tests/test_account_authz.py, RPC by RPC."""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf.json_format import MessageToDict

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia_kit.auth import ROLES
from tests.helpers import DEMO_PASSWORD
from tests import test_account_authz

# The REST matrix's world (a fixture): the same units, users and objects, over gRPC.
world = test_account_authz.world

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
RESPONSIBLE = pb.Responsible(principal="张三", deputy="李四", chief_editor="王五")
STREAM = pb.Delivery(mode="stream")
REFUSAL_CODES = {"role_required", "other_unit", "other_region", "province_only", "client_required"}


def md(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def error_code(err: grpc.aio.AioRpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("error-code")


async def fails(call, status: grpc.StatusCode, code: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == status, (err.value.code(), err.value.details())
    if code is not None:
        assert error_code(err.value) == code, err.value.details()
    return err.value


# --- functional ------------------------------------------------------------------------------

@pytest.fixture
def stack(stack_factory, db_backend):
    # The dormancy watch runs often, with its clock 20 days ahead: every active account is dormant.
    return stack_factory(db_backend, only=("account",), env={"ACCOUNT_ACTIVITY_CHECK_INTERVAL_S": "0.3",
                                                             "ACCOUNT_ACTIVITY_CLOCK_OFFSET_DAYS": "20"})


async def test_lifecycle_inspections_activity_and_signin(stack):
    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)

        async def sign_in(username: str) -> pb.TokenResponse:
            return await stub.IssueToken(pb.IssueTokenRequest(username=username, password=DEMO_PASSWORD))

        ops, editor, principal, regulator = [md((await sign_in(n)).access_token)
                                             for n in ("ops", "editor", "reviewer3", "regulator")]
        unit = (await stub.ListUnits(pb.ListRequest(), metadata=ops)).items[0]

        # --- bad applications: each refused, nothing stored
        good = dict(unit_id=unit.id, platform="weibo", name="示范省政府发布", reason="政务公开需要",
                    meeting_ref="2026年第12次主任办公会", responsible=RESPONSIBLE, delivery=STREAM)
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "platform": "myspace"}), metadata=editor),
                    INVALID, "validation_failed")
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "meeting_ref": ""}), metadata=editor),
                    INVALID, "validation_failed")
        no_responsible = {k: v for k, v in good.items() if k != "responsible"}
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**no_responsible), metadata=editor),
                    INVALID, "validation_failed")
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "delivery": pb.Delivery(
            mode="webhook", url="not a url", secret="s" * 32)}), metadata=editor), INVALID, "validation_failed")
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "name": "美食天天看"}), metadata=editor),
                    INVALID, "account_name_unrelated")
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "unit_id": "nope"}), metadata=editor),
                    INVALID, "unit_not_found")
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**good), metadata=(("authorization", "Bearer x"),)),
                    UNAUTHENTICATED)
        assert list((await stub.ListAccounts(pb.ListAccountsRequest(), metadata=ops)).items) == []

        # --- apply → the principal approves → opened → the regulator files
        acc = await stub.ApplyForAccount(pb.ApplyForAccountRequest(**good, document_ref="示政办〔2026〕11号"),
                                         metadata=editor)
        assert acc.status == "applied" and acc.reason == "政务公开需要" and acc.meeting_ref == good["meeting_ref"]
        assert acc.region_id == unit.region_id and acc.client_secret  # a stream account's secret, once
        got = await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=ops)
        assert got.client_secret == "" and got.status == "applied"
        await fails(stub.ApproveOpening(pb.AccountStepRequest(id=acc.id), metadata=editor), DENIED, "role_required")
        await fails(stub.MarkOpened(pb.MarkOpenedRequest(id=acc.id, handle="sfs", opened_on="2026-09-28"),
                                    metadata=editor), grpc.StatusCode.FAILED_PRECONDITION, "invalid_state")
        approved = await stub.ApproveOpening(pb.AccountStepRequest(id=acc.id, document_ref="示政办〔2026〕12号"),
                                             metadata=principal)
        assert approved.status == "approved"
        for bad in (dict(opened_on="2026-13-01"), dict(opened_on=""), dict(handle="")):
            req = {"id": acc.id, "handle": "sfs", "opened_on": "2026-09-28", **bad}
            await fails(stub.MarkOpened(pb.MarkOpenedRequest(**req), metadata=editor), INVALID, "validation_failed")
        await fails(stub.MarkOpened(pb.MarkOpenedRequest(id=acc.id, handle="sfs", opened_on="2031-03-03"),
                                    metadata=editor), INVALID, "calendar_not_covered")
        assert (await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=ops)).status == "approved"
        opened = await stub.MarkOpened(pb.MarkOpenedRequest(id=acc.id, handle="sfs", opened_on="2026-09-28"),
                                       metadata=editor)
        # 10 working days after 28 Sep 2026: National Day 1–7 Oct off, Sat 10 Oct a make-up working day
        assert opened.status == "opened" and opened.filing_due == "2026-10-16" and opened.filed_on == ""

        await fails(stub.ListFilings(pb.ListFilingsRequest(), metadata=editor), DENIED, "role_required")
        [filing] = (await stub.ListFilings(pb.ListFilingsRequest(overdue=True), metadata=regulator)).items
        assert filing.account_id == acc.id and filing.kind == "opening" and filing.due_on == "2026-10-16"
        assert filing.overdue == (date.fromisoformat(filing.due_on) < datetime.now(timezone(timedelta(hours=8))).date())
        await fails(stub.FileFiling(pb.FileFilingRequest(id=filing.id), metadata=editor), DENIED, "role_required")
        filed = await stub.FileFiling(pb.FileFilingRequest(id=filing.id, document_ref="网管办备〔2026〕88号"),
                                      metadata=regulator)
        assert filed.filed_on and filed.document_ref == "网管办备〔2026〕88号" and not filed.overdue
        await fails(stub.FileFiling(pb.FileFilingRequest(id=filing.id), metadata=regulator),
                    grpc.StatusCode.FAILED_PRECONDITION, "already_filed")
        active = await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=ops)
        assert active.status == "active" and active.filed_on == filed.filed_on
        assert list((await stub.ListFilings(pb.ListFilingsRequest(pending=True), metadata=regulator)).items) == []

        # --- a change: only what is set changes; recorded and owed a filing
        await fails(stub.ChangeAccount(pb.ChangeAccountRequest(id=acc.id, name="美食频道"), metadata=principal),
                    INVALID, "account_name_unrelated")
        await fails(stub.ChangeAccount(pb.ChangeAccountRequest(id=acc.id, note="n"), metadata=principal),
                    INVALID, "nothing_to_change")
        await fails(stub.ChangeAccount(pb.ChangeAccountRequest(id=acc.id, delivery=pb.Delivery(mode="fax")),
                                       metadata=principal), INVALID, "validation_failed")
        await fails(stub.ChangeAccount(pb.ChangeAccountRequest(id=acc.id, note="n", name="示范省政府发布2"),
                                       metadata=editor), DENIED, "role_required")
        new_responsible = pb.Responsible(principal="张三", deputy="李四", chief_editor="赵六")
        changed = await stub.ChangeAccount(pb.ChangeAccountRequest(
            id=acc.id, responsible=new_responsible, document_ref="示政办〔2026〕30号"), metadata=principal)
        assert changed.responsible.chief_editor == "赵六" and changed.name == good["name"]
        pending = (await stub.ListFilings(pb.ListFilingsRequest(pending=True), metadata=regulator)).items
        assert [f.kind for f in pending] == ["change"]

        # --- closing: request → the principal approves → deregistered → the regulator files
        await fails(stub.RequestClosing(pb.RequestClosingRequest(id=acc.id), metadata=editor), INVALID,
                    "validation_failed")
        closing = await stub.RequestClosing(pb.RequestClosingRequest(id=acc.id, reason="职能调整"), metadata=editor)
        assert closing.status == "closing"
        await fails(stub.ApproveClosing(pb.AccountStepRequest(id=acc.id), metadata=editor), DENIED, "role_required")
        assert (await stub.ApproveClosing(pb.AccountStepRequest(id=acc.id), metadata=principal)).status == \
            "close_approved"
        await fails(stub.Deregister(pb.DeregisterRequest(id=acc.id, deregistered_on="2 Nov 2026"), metadata=editor),
                    INVALID, "validation_failed")
        assert (await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=ops)).status == "close_approved"
        gone = await stub.Deregister(pb.DeregisterRequest(id=acc.id, deregistered_on="2026-11-02"), metadata=editor)
        assert gone.status == "deregistered" and gone.deregistered_on == "2026-11-02"
        [closing_filing] = [f for f in (await stub.ListFilings(pb.ListFilingsRequest(pending=True),
                                                              metadata=regulator)).items if f.kind == "closing"]
        assert closing_filing.due_on == "2026-11-09"  # 5 working days after Mon 2 Nov 2026
        await stub.FileFiling(pb.FileFilingRequest(id=closing_filing.id), metadata=regulator)
        final = await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=ops)
        assert final.status == "closed" and final.closed_on

        history = (await stub.AccountHistory(pb.GetAccountRequest(id=acc.id), metadata=ops)).items
        assert [s.action for s in history] == ["applied", "opening_approved", "opened", "opening_filed", "changed",
                                               "closing_requested", "closing_approved", "deregistered",
                                               "closing_filed"]
        assert history[1].document_ref == "示政办〔2026〕12号" and all(s.at and s.actor_id for s in history)
        assert MessageToDict(history[2].data) == {"handle": "sfs", "opened_on": "2026-09-28"}
        assert MessageToDict(history[4].data)["responsible"]["to"]["chief_editor"] == "赵六"

        # --- the province's rules, kept by the regulator
        platforms = {p.platform: p.approved for p in (await stub.ListPlatforms(pb.ListPlatformsRequest(),
                                                                               metadata=editor)).items}
        assert platforms["weibo"] and set(platforms) >= {"weibo", "wechat", "kuaishou"}
        await fails(stub.SetPlatformApproval(pb.SetPlatformApprovalRequest(platform="myspace", approved=False),
                                             metadata=regulator), INVALID, "validation_failed")
        await fails(stub.SetPlatformApproval(pb.SetPlatformApprovalRequest(platform="kuaishou"), metadata=regulator),
                    INVALID, "validation_failed")
        await fails(stub.SetPlatformApproval(pb.SetPlatformApprovalRequest(platform="kuaishou", approved=False),
                                             metadata=ops), DENIED, "role_required")
        unchanged = await stub.ListPlatforms(pb.ListPlatformsRequest(), metadata=editor)
        assert {p.platform: p.approved for p in unchanged.items} == platforms
        refused = await stub.SetPlatformApproval(pb.SetPlatformApprovalRequest(platform="kuaishou", approved=False),
                                                 metadata=regulator)
        assert {p.platform: p.approved for p in refused.items}["kuaishou"] is False
        await fails(stub.ApplyForAccount(pb.ApplyForAccountRequest(**{**good, "platform": "kuaishou"}),
                                         metadata=editor), INVALID, "platform_not_approved")
        await fails(stub.RecordPlatformException(pb.RecordPlatformExceptionRequest(
            unit_id=unit.id, platform="myspace", reason="x"), metadata=regulator), INVALID, "validation_failed")
        await fails(stub.RecordPlatformException(pb.RecordPlatformExceptionRequest(
            unit_id=unit.id, platform="app", reason="x"), metadata=editor), DENIED, "role_required")
        exc = await stub.RecordPlatformException(pb.RecordPlatformExceptionRequest(
            unit_id=unit.id, platform="app", reason="应急发布专用客户端"), metadata=regulator)
        assert exc.id and exc.unit_id == unit.id and exc.platform == "app"
        await fails(stub.RecordPlatformException(pb.RecordPlatformExceptionRequest(
            unit_id=unit.id, platform="app", reason="again"), metadata=regulator),
            grpc.StatusCode.FAILED_PRECONDITION, "exception_exists")

        # --- an inspection round over the province: the running accounts (the closed one is not)
        app = await stub.RegisterAccount(pb.RegisterAccountRequest(
            unit_id=unit.id, platform="app", name="示范省政务客户端", handle="sfs-app", opened_on="2026-01-05",
            responsible=RESPONSIBLE, delivery=STREAM), metadata=ops)
        rounds_before = len((await stub.ListInspections(pb.ListInspectionsRequest(), metadata=regulator)).items)
        round_req = dict(title="2026年11月全面检查", region_id=unit.region_id, scope="all")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**{**round_req, "scope": "some"}), metadata=regulator),
                    INVALID, "validation_failed")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**{**round_req, "title": ""}), metadata=regulator),
                    INVALID, "validation_failed")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**{**round_req, "scope": "sample"}),
                                        metadata=regulator), INVALID, "sample_size_required")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**round_req, sample_size=1), metadata=regulator),
                    INVALID, "sample_size_not_allowed")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**{**round_req, "region_id": "nowhere"}),
                                        metadata=regulator), INVALID, "region_not_found")
        await fails(stub.OpenInspection(pb.OpenInspectionRequest(**round_req), metadata=ops), DENIED, "role_required")
        assert len((await stub.ListInspections(pb.ListInspectionsRequest(), metadata=regulator)).items) == rounds_before
        sample = await stub.OpenInspection(pb.OpenInspectionRequest(
            title="抽查", region_id=unit.region_id, scope="sample", sample_size=1, seed=7), metadata=regulator)
        assert sample.seed == 7 and sample.sample_size == 1 and len(sample.accounts) == 1
        rnd = await stub.OpenInspection(pb.OpenInspectionRequest(**round_req), metadata=regulator)
        assert [a.account_id for a in rnd.accounts] == [app.id] and rnd.population == 1
        assert not rnd.HasField("pass_rate") and not rnd.HasField("sample_size") and rnd.opened_at
        assert not rnd.accounts[0].HasField("result")

        result = dict(inspection_id=rnd.id, account_id=app.id)
        await fails(stub.RecordInspectionResult(pb.RecordInspectionResultRequest(**result), metadata=regulator),
                    INVALID, "validation_failed")  # passed is required
        await fails(stub.RecordInspectionResult(pb.RecordInspectionResultRequest(**result, passed=False),
                                                metadata=regulator), INVALID, "failure_reason_required")
        await fails(stub.RecordInspectionResult(pb.RecordInspectionResultRequest(**result, passed=False, veto="meh"),
                                                metadata=regulator), INVALID, "validation_failed")
        await fails(stub.RecordInspectionResult(pb.RecordInspectionResultRequest(
            inspection_id=rnd.id, account_id=acc.id, passed=True), metadata=regulator), INVALID,
            "account_not_in_round")
        await fails(stub.OrderRectification(pb.OrderRectificationRequest(
            **result, deadline="2026-12-31", requirement="恢复更新"), metadata=regulator),
            grpc.StatusCode.FAILED_PRECONDITION, "account_not_failed")
        passed = await stub.RecordInspectionResult(pb.RecordInspectionResultRequest(**result, passed=True),
                                                   metadata=regulator)
        assert passed.result.passed and passed.account_name == "示范省政务客户端"
        entry = await stub.RecordInspectionResult(pb.RecordInspectionResultRequest(
            **result, passed=False, veto="no_update_two_weeks", notes="两周未更新"), metadata=regulator)
        assert not entry.result.passed and entry.result.veto == "no_update_two_weeks" and entry.result.recorded_at
        assert [p.passed for p in entry.previous] == [True]

        await fails(stub.OrderRectification(pb.OrderRectificationRequest(
            **result, deadline="31/12/2026", requirement="恢复更新"), metadata=regulator), INVALID, "validation_failed")
        await fails(stub.OrderRectification(pb.OrderRectificationRequest(**result, deadline="2026-12-31"),
                                            metadata=regulator), INVALID, "validation_failed")
        assert list((await stub.ListRectifications(pb.ListRectificationsRequest(), metadata=regulator)).items) == []
        rect = await stub.OrderRectification(pb.OrderRectificationRequest(
            **result, deadline="2099-12-31", requirement="恢复更新并说明原因"), metadata=regulator)
        assert rect.deadline == "2099-12-31" and not rect.overdue and rect.done_at == "" and rect.ordered_at
        await fails(stub.RectificationDone(pb.RectificationDoneRequest(id=rect.id), metadata=editor), INVALID,
                    "validation_failed")
        await fails(stub.RectificationDone(pb.RectificationDoneRequest(id=rect.id, note="已恢复"), metadata=ops),
                    DENIED, "role_required")
        done = await stub.RectificationDone(pb.RectificationDoneRequest(id=rect.id, note="已恢复更新"), metadata=editor)
        assert done.done_at and done.done_note == "已恢复更新"
        await fails(stub.RecordMeasure(pb.RecordMeasureRequest(**result, kind="flogging"), metadata=regulator),
                    INVALID, "validation_failed")
        measure = await stub.RecordMeasure(pb.RecordMeasureRequest(**result, kind="interview",
                                                                   document_ref="约谈〔2026〕5号"), metadata=regulator)
        assert measure.kind == "interview" and measure.recorded_at and measure.unit_id == unit.id

        rects = (await stub.ListRectifications(pb.ListRectificationsRequest(inspection_id=rnd.id), metadata=editor))
        assert [r.id for r in rects.items] == [rect.id] and rects.items[0].done_at
        assert list((await stub.ListRectifications(pb.ListRectificationsRequest(overdue=True),
                                                   metadata=regulator)).items) == []
        seen = await stub.GetInspection(pb.GetInspectionRequest(id=rnd.id), metadata=editor)
        assert (seen.checked, seen.failed, seen.passed) == (1, 1, 0) and seen.HasField("pass_rate")
        assert seen.pass_rate == 0.0
        assert [m.id for m in seen.measures] == [measure.id] and [r.id for r in seen.rectifications] == [rect.id]
        listed = {i.id: i for i in (await stub.ListInspections(pb.ListInspectionsRequest(), metadata=regulator)).items}
        assert set(listed) == {sample.id, rnd.id} and listed[rnd.id].failed == 1
        assert not listed[rnd.id].accounts  # the summary only
        await fails(stub.GetInspection(pb.GetInspectionRequest(id="nope"), metadata=regulator),
                    grpc.StatusCode.NOT_FOUND, "inspection_not_found")

        # --- activity: the watch's clock is 20 days ahead, so the new account is dormant
        await fails(stub.ListDormantAccounts(pb.ListDormantAccountsRequest(), metadata=editor), DENIED,
                    "role_required")
        await fails(stub.ListDormantAccounts(pb.ListDormantAccountsRequest(stage="asleep"), metadata=regulator),
                    INVALID, "validation_failed")
        for _ in range(100):
            dormant = (await stub.ListDormantAccounts(pb.ListDormantAccountsRequest(stage="dormant"),
                                                      metadata=regulator)).items
            if dormant:
                break
            await asyncio.sleep(0.1)
        [d] = dormant
        assert d.account_id == app.id and d.dormant and d.silent_days == 20 and d.stage_at and d.dormant_since
        seen = await stub.GetAccountActivity(pb.GetAccountRequest(id=app.id), metadata=editor)
        assert seen.status == "active" and seen.dormant and seen.stage == "dormant" and seen.silent_days == 20
        assert len(seen.monthly) == 12 and all(m.items == 0 for m in seen.monthly) and seen.last_published_at == ""
        await fails(stub.GetAccountActivity(pb.GetAccountRequest(id="nope"), metadata=editor),
                    grpc.StatusCode.NOT_FOUND, "account_not_found")
        # the regulator is told of the dormant account in its notices, and reads it once
        told = [n for n in (await stub.ListNotices(pb.ListNoticesRequest(), metadata=regulator)).items
                if n.account_id == app.id]
        assert [n.kind for n in told] == ["dormancy.dormant"] and not told[0].read and "20天未更新" in told[0].title
        assert (await stub.MarkNoticeRead(pb.MarkNoticeReadRequest(notice_id=told[0].id), metadata=regulator)).read
        unread = (await stub.ListNotices(pb.ListNoticesRequest(unread=True), metadata=regulator)).items
        assert told[0].id not in {n.id for n in unread}
        await fails(stub.MarkNoticeRead(pb.MarkNoticeReadRequest(notice_id=told[0].id), metadata=editor),
                    grpc.StatusCode.NOT_FOUND, "notice_not_found")

        # --- sign-in: revoking a refresh token ends its session
        session = await sign_in("editor")
        await fails(stub.RevokeToken(pb.RevokeTokenRequest()), INVALID, "invalid_request")
        await fails(stub.RevokeToken(pb.RevokeTokenRequest(token=session.access_token)), INVALID,
                    "unsupported_token_type")
        await fails(stub.RevokeToken(pb.RevokeTokenRequest(token="x" * 5000)), INVALID, "validation_failed")
        await stub.RevokeToken(pb.RevokeTokenRequest(token="never-issued"))
        renewed = await stub.IssueToken(pb.IssueTokenRequest(grant_type="refresh_token",
                                                             refresh_token=session.refresh_token))
        await stub.RevokeToken(pb.RevokeTokenRequest(token=renewed.refresh_token, token_type_hint="refresh_token"))
        await fails(stub.IssueToken(pb.IssueTokenRequest(grant_type="refresh_token",
                                                         refresh_token=renewed.refresh_token)),
                    UNAUTHENTICATED, "invalid_grant")

        # --- client secrets of stream accounts: rotated (shown once), revoked
        async def client_grant(secret: str):
            return await stub.IssueToken(pb.IssueTokenRequest(grant_type="client_credentials", client_id=app.id,
                                                              client_secret=secret))

        assert (await client_grant(app.client_secret)).access_token
        await fails(stub.RotateClientSecret(pb.ClientSecretRequest(id=app.id), metadata=editor), DENIED,
                    "role_required")
        await fails(stub.RotateClientSecret(pb.ClientSecretRequest(id="nope"), metadata=ops),
                    grpc.StatusCode.NOT_FOUND, "account_not_found")
        rotated = await stub.RotateClientSecret(pb.ClientSecretRequest(id=app.id), metadata=regulator)
        assert rotated.client_id == app.id and rotated.client_secret != app.client_secret and rotated.rotated_at
        await fails(client_grant(app.client_secret), UNAUTHENTICATED, "invalid_client")
        assert (await client_grant(rotated.client_secret)).access_token
        assert (await stub.GetAccount(pb.GetAccountRequest(id=app.id), metadata=ops)).client_secret == ""
        await stub.RevokeClientSecret(pb.ClientSecretRequest(id=app.id), metadata=ops)
        await fails(client_grant(rotated.client_secret), UNAUTHENTICATED, "invalid_client")

        # --- signing keys (ops of the province)
        await fails(stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=regulator), DENIED, "role_required")
        [k1] = (await stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=ops)).items
        assert k1.active and k1.published and k1.created_at and k1.retire_at == ""
        await fails(stub.RotateSigningKeys(pb.RotateSigningKeysRequest(grace_s=-1), metadata=ops), INVALID,
                    "validation_failed")
        assert len((await stub.ListSigningKeys(pb.ListSigningKeysRequest(), metadata=ops)).items) == 1
        new = await stub.RotateSigningKeys(pb.RotateSigningKeysRequest(), metadata=ops)
        keys = {k.kid: k for k in new.keys}
        assert new.kid != k1.kid and keys[new.kid].active and not keys[k1.kid].active
        assert keys[k1.kid].published and keys[k1.kid].retire_at
        # a token the old key signed still verifies during its grace
        assert (await stub.ListUnits(pb.ListRequest(), metadata=editor)).items


# --- the authorisation matrix ------------------------------------------------------------------

PASSWORD = "matrix-pass-2026"
EVERYONE = set(ROLES)
STAFF = {"editor", "section_head", "deputy", "principal", "chief_editor"}
READERS = {"regulator", "supervisor", "ops"}  # read the ledger, activity, filings
INSPECTION_READERS = {"regulator", "ops"}  # see other units' accounts in a round (inspections.READERS)
CROSS = {"ops", "regulator"}


def rpcs(ids: dict):
    """(RPC, request for call n, allowed from the object's own unit, from another unit of its
    region, from a unit of a city outside the object's subtree). The same sets as the REST
    matrix for the same operations; lists answer everyone they answer in the other unit too."""
    a, s, unit, region = ids["applied"], ids["stream"], ids["unit"], ids["region"]
    rnd, rect, t = ids["inspection"], ids["rectification"], ids["target"]
    MANAGERS = test_account_authz.USER_MANAGERS
    responsible = pb.Responsible(principal="甲", deputy="乙", chief_editor="丙")
    stream = pb.Delivery(mode="stream")
    E, n0 = EVERYONE, set()
    rows = [
        # organisation and the ledger (existing RPCs)
        ("ListRegions", lambda n: pb.ListRequest(), E, E, E),
        ("CreateRegion", lambda n: pb.CreateRegionRequest(name=f"某市{n}", parent_id=region, level="city"),
         CROSS, CROSS, n0),
        ("ListUnits", lambda n: pb.ListRequest(), E, E, E),
        ("CreateUnit", lambda n: pb.CreateUnitRequest(name=f"某局{n}", region_id=region), CROSS, CROSS, n0),
        ("ListUsers", lambda n: pb.ListRequest(), E, E, E),
        ("CreateUser", lambda n: pb.CreateUserRequest(username=f"made-{n}", password=PASSWORD, unit_id=unit,
                                                      roles=["editor"]), {"ops"}, {"ops"}, n0),
        # user administration: ops by reach, the unit's principal (test_account_authz.USER_MANAGERS)
        ("GetUser", lambda n: pb.GetUserRequest(id=t), E, CROSS, n0),
        ("DeactivateUser", lambda n: pb.DeactivateUserRequest(id=t, reason="r"), MANAGERS, {"ops"}, n0),
        ("ReactivateUser", lambda n: pb.ReactivateUserRequest(id=t), MANAGERS, {"ops"}, n0),
        ("SetUserRoles", lambda n: pb.SetUserRolesRequest(id=t, roles=["editor"]), MANAGERS, {"ops"}, n0),
        ("ResetUserPassword", lambda n: pb.ResetUserPasswordRequest(id=t, password=PASSWORD), MANAGERS, {"ops"}, n0),
        ("UserAudit", lambda n: pb.GetUserRequest(id=t), MANAGERS, {"ops"}, n0),
        ("ListAccounts", lambda n: pb.ListAccountsRequest(), E, E, E),
        ("RegisterAccount", lambda n: pb.RegisterAccountRequest(
            unit_id=unit, platform="wechat", name="示范省发布", handle="authz-wx", opened_on="2026-01-05",
            responsible=responsible, delivery=stream), CROSS, CROSS, n0),
        ("GetAccount", lambda n: pb.GetAccountRequest(id=s), E, READERS, n0),
        ("AccountHistory", lambda n: pb.GetAccountRequest(id=s), E, READERS, n0),
        # the lifecycle
        ("ApplyForAccount", lambda n: pb.ApplyForAccountRequest(
            unit_id=unit, platform="douyin", name="示范省政府抖音", reason="r", meeting_ref="m",
            responsible=responsible, delivery=stream), STAFF | {"ops"}, {"ops"}, n0),
        ("ApproveOpening", lambda n: pb.AccountStepRequest(id=a), {"principal"}, n0, n0),
        ("MarkOpened", lambda n: pb.MarkOpenedRequest(id=a, handle=f"h-{n}", opened_on="2026-03-02"),
         STAFF | {"ops"}, {"ops"}, n0),
        ("ChangeAccount", lambda n: pb.ChangeAccountRequest(id=s, note="n", name="示范省政务客户端"),
         {"principal", "chief_editor"} | CROSS, CROSS, n0),
        ("RequestClosing", lambda n: pb.RequestClosingRequest(id=a, reason="r"), STAFF | CROSS, CROSS, n0),
        ("ApproveClosing", lambda n: pb.AccountStepRequest(id=a), {"principal"}, n0, n0),
        ("Deregister", lambda n: pb.DeregisterRequest(id=a, deregistered_on="2026-03-02"), STAFF | {"ops"}, {"ops"},
         n0),
        ("ListFilings", lambda n: pb.ListFilingsRequest(), READERS, READERS, READERS),
        ("FileFiling", lambda n: pb.FileFilingRequest(id=ids["filing"]), CROSS, CROSS, n0),
        ("RecordPlatformException", lambda n: pb.RecordPlatformExceptionRequest(
            unit_id=unit, platform="bilibili", reason="r"), CROSS, CROSS, n0),
        ("ListPlatforms", lambda n: pb.ListPlatformsRequest(), E, E, E),
        ("SetPlatformApproval", lambda n: pb.SetPlatformApprovalRequest(platform="kuaishou", approved=True),
         {"regulator"}, {"regulator"}, n0),
        # inspections
        ("OpenInspection", lambda n: pb.OpenInspectionRequest(title="月度检查", region_id=region, scope="all"),
         {"regulator"}, {"regulator"}, n0),
        ("GetInspection", lambda n: pb.GetInspectionRequest(id=rnd), E, INSPECTION_READERS, n0),
        ("ListInspections", lambda n: pb.ListInspectionsRequest(), E, E, E),
        ("RecordInspectionResult", lambda n: pb.RecordInspectionResultRequest(
            inspection_id=rnd, account_id=s, passed=False, veto="no_interaction"), {"regulator"}, {"regulator"}, n0),
        ("OrderRectification", lambda n: pb.OrderRectificationRequest(
            inspection_id=rnd, account_id=s, deadline="2099-12-31", requirement="r"), {"regulator"}, {"regulator"}, n0),
        ("RectificationDone", lambda n: pb.RectificationDoneRequest(id=rect, note="done"),
         {"regulator", "principal", "chief_editor", "editor"}, {"regulator"}, n0),
        ("ListRectifications", lambda n: pb.ListRectificationsRequest(), E, E, E),
        ("RecordMeasure", lambda n: pb.RecordMeasureRequest(inspection_id=rnd, account_id=s, kind="warning"),
         {"regulator"}, {"regulator"}, n0),
        # activity
        ("GetAccountActivity", lambda n: pb.GetAccountRequest(id=s), E, READERS, n0),
        ("ListDormantAccounts", lambda n: pb.ListDormantAccountsRequest(), READERS, READERS, READERS),
        # sign-in (RevokeToken, like POST /v1/auth/revoke, needs no token at all)
        ("RevokeToken", lambda n: pb.RevokeTokenRequest(token=f"never-issued-{n}"), E, E, E),
        ("ListSigningKeys", lambda n: pb.ListSigningKeysRequest(), {"ops"}, {"ops"}, n0),
        ("RotateSigningKeys", lambda n: pb.RotateSigningKeysRequest(), {"ops"}, {"ops"}, n0),
        ("RotateClientSecret", lambda n: pb.ClientSecretRequest(id=s), CROSS, CROSS, n0),
        ("RevokeClientSecret", lambda n: pb.ClientSecretRequest(id=s), CROSS, CROSS, n0),
        ("IssueNatsCredentials", lambda n: pb.IssueNatsCredentialsRequest(), n0, n0, n0),
        # the second factor: every person for themselves; ops reset another user's, by reach
        ("EnrolTotp", lambda n: pb.EnrolTotpRequest(), E, E, E),
        ("ConfirmTotp", lambda n: pb.ConfirmTotpRequest(code="000000"), E, E, E),
        ("DisableTotp", lambda n: pb.DisableTotpRequest(code="000000"), E, E, E),
        ("ResetUserTotp", lambda n: pb.GetUserRequest(id=t), {"ops"}, {"ops"}, n0),
        # notices: everyone reads their own inbox; an unknown notice is 404, not a refusal
        ("ListNotices", lambda n: pb.ListNoticesRequest(), E, E, E),
        ("MarkNoticeRead", lambda n: pb.MarkNoticeReadRequest(notice_id="nope"), E, E, E),
        # the calendar: every signed-in person reads it; ops of the province load a notice
        ("ListCalendarYears", lambda n: pb.ListCalendarYearsRequest(), E, E, E),
        ("PutCalendarYear", lambda n: pb.PutCalendarYearRequest(**test_account_authz.next_year_notice()),
         {"ops"}, {"ops"}, n0),
    ]
    return rows


def test_matrix_covers_every_rpc():
    """Every RPC but IssueToken (which takes credentials, not a bearer token) is in the matrix."""
    names = set(pb.DESCRIPTOR.services_by_name["AccountService"].methods_by_name)
    ids = dict.fromkeys(("applied", "stream", "unit", "region", "filing", "inspection", "rectification", "target"),
                        "x")
    assert {row[0] for row in rpcs(ids)} == names - {"IssueToken"}


async def test_every_role_against_every_rpc(world):
    stack, tokens, ids = world
    wrong = []
    n = 0
    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        for name, request, own, other, city in rpcs(ids):
            for (role, where), token in tokens.items():
                n += 1
                allowed = role in {"own": own, "other": other, "city": city}[where]
                try:
                    await getattr(stub, name)(request(n), metadata=md(token), timeout=15)
                    status, code = grpc.StatusCode.OK, None
                except grpc.aio.AioRpcError as err:
                    status, code = err.code(), error_code(err)
                refused = status in (DENIED, UNAUTHENTICATED)
                if allowed == refused or (refused and (status != DENIED or code not in REFUSAL_CODES)) \
                        or status in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    wrong.append(f"{name} as {role} ({where} unit): {status.name} {code}")
    assert not wrong, "\n".join(wrong)

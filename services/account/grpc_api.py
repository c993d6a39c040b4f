"""gRPC transport of the account service: the same use cases as REST."""
from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field as PField

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia_kit.auth import grpc_principal
from govmedia_kit.client_address import grpc_client, trusted_proxies
from govmedia_kit.db import iso
from govmedia_kit.errors import invalid
from govmedia_kit.grpc import grpc_errors, page_limit, parse_request
from govmedia_kit.runtime import Runtime

from . import accounts, activity, calendar, inspections, nats_clients, notices, signin, usecases
from .calendar_models import CalendarYearIn, CalendarYearPublic
from .activity_models import ActivityPublic, DormantEntry
from .inspections_models import (
    EntryPublic, InspectionCreate, InspectionPublic, InspectionSummary, MeasureIn, MeasurePublic, RectificationDoneIn,
    RectificationIn, RectificationPublic, ResultIn, ResultPublic,
)
from .models import (
    AccountCreate, AccountPublic, AccountStep, ApplicationCreate, ChangeIn, CloseIn, DeregisterIn, Filing,
    NatsCredentialsIn, OpenIn, PasswordResetIn, Platform, PlatformApprovalIn, PlatformExceptionIn, Region,
    RegionCreate, StepIn, Strict, Unit, UnitCreate, User, UserCreate, UserDeactivate, UserReactivate, UserRolesIn,
)
from .signin_models import KeyPublic, KeyRotate, TotpConfirmIn, TotpDisableIn, TotpEnrolIn, TotpStatus

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["AccountService"].full_name


# What REST takes from the path or the query and validates there, as models, so gRPC refuses
# the same input with the same `validation_failed`.

class PlatformApprovalRequest(PlatformApprovalIn):
    platform: Platform  # the path parameter of PUT /v1/platforms/{platform}


class DormantFilters(Strict):
    stage: activity.Stage | None = None  # the query parameter of GET /v1/activity/dormant


class RevokeIn(BaseModel):
    """The form of POST /v1/auth/revoke."""

    token: str = PField(default="", max_length=4096)
    token_type_hint: str = PField(default="", max_length=40)


def _notice(n) -> pb.Notice:
    return pb.Notice(id=n.id, kind=n.kind, about_id=n.about_id, account_id=n.account_id or "", unit_id=n.unit_id,
                     title=n.title, body=n.body, created_at=iso(n.created_at) or "", read=n.read)


def _date(value: str, field: str) -> date:
    """A "YYYY-MM-DD" request field, refused like a bad date in a REST body."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise invalid("validation_failed", f"{field} 须为 YYYY-MM-DD", [{"field": field}])


def _day(d: date | None) -> str:
    return d.isoformat() if d else ""


def _responsible_in(r: pb.Responsible) -> dict:
    return {"principal": r.principal, "deputy": r.deputy, "chief_editor": r.chief_editor}


def _delivery_in(d: pb.Delivery) -> dict:
    delivery = {"mode": d.mode}
    if d.mode == "webhook":
        delivery.update(url=d.url, secret=d.secret)
    return delivery


def _optional(request, field: str, convert=lambda m: m):
    """A message field that is None when the request does not set it (REST: the key is absent)."""
    return convert(getattr(request, field)) if request.HasField(field) else None


def _region(r: Region) -> pb.Region:
    return pb.Region(id=r.id, name=r.name, parent_id=r.parent_id or "", level=r.level)


def _unit(u: Unit) -> pb.Unit:
    return pb.Unit(id=u.id, name=u.name, region_id=u.region_id, parent_id=u.parent_id or "", kind=u.kind)


def _user(u: User) -> pb.User:
    return pb.User(id=u.id, username=u.username, display_name=u.display_name, unit_id=u.unit_id, roles=u.roles,
                   active=u.active)


def _totp(t: TotpStatus) -> pb.TotpStatus:
    return pb.TotpStatus(user_id=t.user_id, enrolled=t.enrolled, confirmed_at=iso(t.confirmed_at) or "")


def _audit_entry(e) -> pb.UserAuditEntry:
    out = pb.UserAuditEntry(seq=e.seq, action=e.action, actor=e.actor, at=e.at, prev_hash=e.prev_hash, hash=e.hash)
    if e.before is not None:
        out.before.update(e.before)
    if e.after is not None:
        out.after.update(e.after)
    return out


def _account(a: AccountPublic) -> pb.Account:
    return pb.Account(
        id=a.id, unit_id=a.unit_id, platform=a.platform, name=a.name, handle=a.handle or "",
        opened_on=a.opened_on.isoformat() if a.opened_on else "", responsible=pb.Responsible(**a.responsible),
        delivery=pb.Delivery(mode=a.delivery.mode, url=a.delivery.url or ""), status=a.status,
        client_id=a.client_id or "", client_secret=a.client_secret or "",
        filing_due=a.filing_due.isoformat() if a.filing_due else "", filed_on=a.filed_on.isoformat() if a.filed_on else "",
        region_id=a.region_id, reason=a.reason or "", meeting_ref=a.meeting_ref or "",
        deregistered_on=_day(a.deregistered_on), closed_on=_day(a.closed_on), filing_calendar=a.filing_calendar or "",
    )


def _step(step: AccountStep) -> pb.Step:
    out = pb.Step(id=step.id, action=step.action, actor_id=step.actor_id, at=iso(step.at) or "",
                  document_ref=step.document_ref or "", note=step.note or "")
    out.data.update(step.data or {})
    return out


def _filing(f: Filing, overdue: bool = False) -> pb.Filing:
    return pb.Filing(id=f.id, account_id=f.account_id, kind=f.kind, due_on=_day(f.due_on), filed_on=_day(f.filed_on),
                     filed_by=f.filed_by or "", document_ref=f.document_ref or "", overdue=overdue,
                     calendar=f.calendar)


def _platforms(approved: dict[str, bool]) -> pb.PlatformList:
    return pb.PlatformList(items=[pb.PlatformApproval(platform=p, approved=ok) for p, ok in approved.items()])


def _result(r: ResultPublic) -> pb.InspectionResult:
    return pb.InspectionResult(passed=r.passed, veto=r.veto or "", notes=r.notes or "", recorded_by=r.recorded_by,
                               recorded_at=iso(r.recorded_at) or "")


def _entry(e: EntryPublic) -> pb.InspectionEntry:
    return pb.InspectionEntry(account_id=e.account_id, account_name=e.account_name, platform=e.platform,
                              unit_id=e.unit_id, result=_result(e.result) if e.result else None,
                              previous=[_result(p) for p in e.previous])


def _rectification(r: RectificationPublic) -> pb.Rectification:
    return pb.Rectification(
        id=r.id, inspection_id=r.inspection_id, account_id=r.account_id, unit_id=r.unit_id, deadline=_day(r.deadline),
        requirement=r.requirement, ordered_by=r.ordered_by, ordered_at=iso(r.ordered_at) or "",
        done_at=iso(r.done_at) or "", done_by=r.done_by or "", done_note=r.done_note or "", overdue=r.overdue,
        overdue_flagged_at=iso(r.overdue_flagged_at) or "")


def _measure(m: MeasurePublic) -> pb.Measure:
    return pb.Measure(id=m.id, inspection_id=m.inspection_id, account_id=m.account_id, unit_id=m.unit_id, kind=m.kind,
                      note=m.note or "", document_ref=m.document_ref or "", recorded_by=m.recorded_by,
                      recorded_at=iso(m.recorded_at) or "")


def _inspection(i: InspectionSummary) -> pb.Inspection:
    out = pb.Inspection(
        id=i.id, title=i.title, region_id=i.region_id, scope=i.scope, sample_size=i.sample_size, seed=i.seed,
        population=i.population, opened_by=i.opened_by, opened_at=iso(i.opened_at) or "",
        accounts_total=i.accounts_total, checked=i.checked, passed=i.passed, failed=i.failed, pass_rate=i.pass_rate)
    if isinstance(i, InspectionPublic):
        out.accounts.extend(_entry(e) for e in i.accounts)
        out.rectifications.extend(_rectification(r) for r in i.rectifications)
        out.measures.extend(_measure(m) for m in i.measures)
    return out


def _activity(a: ActivityPublic) -> pb.AccountActivity:
    return pb.AccountActivity(
        account_id=a.account_id, unit_id=a.unit_id, status=a.status, last_published_at=a.last_published_at or "",
        silent_since=a.silent_since or "", silent_days=a.silent_days, stage=a.stage or "", dormant=a.dormant,
        dormant_since=a.dormant_since or "", monthly=[pb.MonthCount(month=m.month, items=m.items) for m in a.monthly])


def _dormant(d: DormantEntry) -> pb.DormantAccount:
    return pb.DormantAccount(
        account_id=d.account_id, unit_id=d.unit_id, region_id=d.region_id, platform=d.platform, name=d.name,
        stage=d.stage, silent_days=d.silent_days, last_published_at=d.last_published_at or "", dormant=d.dormant,
        dormant_since=d.dormant_since or "", stage_at=d.stage_at or "")


def _key(k: KeyPublic) -> pb.SigningKey:
    return pb.SigningKey(kid=k.kid, active=k.active, published=k.published, created_at=iso(k.created_at) or "",
                         retire_at=iso(k.retire_at) or "")


def _calendar_year(y: CalendarYearPublic) -> pb.CalendarYear:
    return pb.CalendarYear(
        year=y.year, source=y.source, calendar=y.calendar, holidays=[d.isoformat() for d in y.holidays],
        workdays=[d.isoformat() for d in y.workdays], version=y.version or 0, revision=y.revision or 0,
        notice=pb.CalendarNotice(number=y.notice.number, published_on=y.notice.published_on.isoformat())
        if y.notice else None, loaded_by=y.loaded_by or "", loaded_at=iso(y.loaded_at) or "", law=y.law or "")


class YearPath(BaseModel):
    year: int = PField(ge=2004, le=2100)  # the path parameter of PUT /v1/calendar/years/{year}


class AccountServicer(pb_grpc.AccountServiceServicer):
    def __init__(self, rt: Runtime):
        self.rt = rt

    async def _who(self, context, allow_clients: bool = False):
        return await grpc_principal(context, self.rt.verifier, allow_clients)

    @grpc_errors
    async def IssueToken(self, request, context):
        t = await signin.issue_token(self.rt, request.grant_type or "password", request.username, request.password,
                                     request.client_id, request.client_secret, request.refresh_token,
                                     grpc_client(context, trusted_proxies(self.rt)), request.otp)
        return pb.TokenResponse(access_token=t.access_token, token_type=t.token_type, expires_in=t.expires_in,
                                refresh_token=t.refresh_token or "", refresh_expires_in=t.refresh_expires_in or 0)

    @grpc_errors
    async def CreateRegion(self, request, context):
        who = await self._who(context)
        data = parse_request(RegionCreate, name=request.name, parent_id=request.parent_id or None, level=request.level)
        return _region(await usecases.create_region(self.rt, who, data))

    @grpc_errors
    async def ListRegions(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_of(self.rt, who, Region, page_limit(request.limit), request.cursor or None)
        return pb.RegionList(items=[_region(r) for r in items], next_cursor=nxt or "")

    @grpc_errors
    async def CreateUnit(self, request, context):
        who = await self._who(context)
        data = parse_request(UnitCreate, name=request.name, region_id=request.region_id, parent_id=request.parent_id or None,
                     kind=request.kind or "government")
        return _unit(await usecases.create_unit(self.rt, who, data))

    @grpc_errors
    async def ListUnits(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_of(self.rt, who, Unit, page_limit(request.limit), request.cursor or None)
        return pb.UnitList(items=[_unit(u) for u in items], next_cursor=nxt or "")

    @grpc_errors
    async def CreateUser(self, request, context):
        who = await self._who(context)
        data = parse_request(UserCreate, username=request.username, password=request.password,
                     display_name=request.display_name, unit_id=request.unit_id, roles=list(request.roles))
        return _user(await usecases.create_user(self.rt, who, data))

    @grpc_errors
    async def ListUsers(self, request, context):
        who = await self._who(context)
        items, nxt = await usecases.list_users(self.rt, who, page_limit(request.limit), request.cursor or None)
        return pb.UserList(items=[_user(u) for u in items], next_cursor=nxt or "")

    @grpc_errors
    async def GetUser(self, request, context):
        who = await self._who(context)
        return _user(await usecases.get_user(self.rt, who, request.id))

    @grpc_errors
    async def DeactivateUser(self, request, context):
        who = await self._who(context)
        data = parse_request(UserDeactivate, reason=request.reason)
        return _user(await usecases.deactivate_user(self.rt, who, request.id, data))

    @grpc_errors
    async def ReactivateUser(self, request, context):
        who = await self._who(context)
        data = parse_request(UserReactivate, reason=request.reason)
        return _user(await usecases.reactivate_user(self.rt, who, request.id, data))

    @grpc_errors
    async def SetUserRoles(self, request, context):
        who = await self._who(context)
        data = parse_request(UserRolesIn, roles=list(request.roles), reason=request.reason)
        return _user(await usecases.set_user_roles(self.rt, who, request.id, data))

    @grpc_errors
    async def ResetUserPassword(self, request, context):
        who = await self._who(context)
        data = parse_request(PasswordResetIn, password=request.password, reason=request.reason)
        return _user(await usecases.reset_password(self.rt, who, request.id, data))

    @grpc_errors
    async def UserAudit(self, request, context):
        who = await self._who(context)
        items, _ = await usecases.user_audit(self.rt, who, request.id, 10_000, None)
        verified = await usecases.user_audit_verify(self.rt, who, request.id)
        return pb.UserAuditTrail(user_id=request.id, items=[_audit_entry(e) for e in items], ok=verified.ok,
                                 first_broken_seq=(verified.first_broken or {}).get("seq", 0))

    @grpc_errors
    async def RegisterAccount(self, request, context):
        who = await self._who(context)
        opened_on = _date(request.opened_on, "opened_on")
        data = parse_request(AccountCreate, unit_id=request.unit_id, platform=request.platform, name=request.name,
                     handle=request.handle, opened_on=opened_on, delivery=_delivery_in(request.delivery),
                     responsible=_responsible_in(request.responsible))
        return _account(await accounts.register_account(self.rt, who, data))

    @grpc_errors
    async def GetAccount(self, request, context):
        return _account(await accounts.get_account(self.rt, await self._who(context, allow_clients=True), request.id))

    @grpc_errors
    async def ListAccounts(self, request, context):
        who = await self._who(context)
        items, nxt = await accounts.list_accounts(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                  request.region_id or None, request.unit_id or None,
                                                  request.platform or None, request.status or None)
        return pb.AccountList(items=[_account(AccountPublic.of(a)) for a in items], next_cursor=nxt or "")

    # --- the lifecycle (rest.py) ---------------------------------------------------------

    @grpc_errors
    async def ApplyForAccount(self, request, context):
        who = await self._who(context)
        data = parse_request(ApplicationCreate, unit_id=request.unit_id, platform=request.platform, name=request.name,
                             reason=request.reason, meeting_ref=request.meeting_ref,
                             responsible=_optional(request, "responsible", _responsible_in),
                             delivery=_optional(request, "delivery", _delivery_in),
                             document_ref=request.document_ref or None)
        return _account(await accounts.apply(self.rt, who, data))

    @grpc_errors
    async def ApproveOpening(self, request, context):
        who = await self._who(context)
        data = parse_request(StepIn, document_ref=request.document_ref or None, note=request.note or None)
        return _account(await accounts.approve_opening(self.rt, who, request.id, data))

    @grpc_errors
    async def MarkOpened(self, request, context):
        who = await self._who(context)
        opened_on = _date(request.opened_on, "opened_on")
        data = parse_request(OpenIn, handle=request.handle, opened_on=opened_on,
                             document_ref=request.document_ref or None, note=request.note or None)
        return _account(await accounts.mark_opened(self.rt, who, request.id, data))

    @grpc_errors
    async def ChangeAccount(self, request, context):
        who = await self._who(context)
        data = parse_request(ChangeIn, name=request.name if request.HasField("name") else None,
                             responsible=_optional(request, "responsible", _responsible_in),
                             delivery=_optional(request, "delivery", _delivery_in),
                             document_ref=request.document_ref or None, note=request.note or None)
        return _account(await accounts.change(self.rt, who, request.id, data))

    @grpc_errors
    async def RequestClosing(self, request, context):
        who = await self._who(context)
        data = parse_request(CloseIn, reason=request.reason, document_ref=request.document_ref or None,
                             note=request.note or None)
        return _account(await accounts.request_closing(self.rt, who, request.id, data))

    @grpc_errors
    async def ApproveClosing(self, request, context):
        who = await self._who(context)
        data = parse_request(StepIn, document_ref=request.document_ref or None, note=request.note or None)
        return _account(await accounts.approve_closing(self.rt, who, request.id, data))

    @grpc_errors
    async def Deregister(self, request, context):
        who = await self._who(context)
        deregistered_on = _date(request.deregistered_on, "deregistered_on")
        data = parse_request(DeregisterIn, deregistered_on=deregistered_on, document_ref=request.document_ref or None,
                             note=request.note or None)
        return _account(await accounts.deregister(self.rt, who, request.id, data))

    @grpc_errors
    async def AccountHistory(self, request, context):
        who = await self._who(context)
        return pb.StepList(items=[_step(step) for step in await accounts.history(self.rt, who, request.id)])

    @grpc_errors
    async def ListFilings(self, request, context):
        who = await self._who(context)
        items, nxt = await accounts.list_filings(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                 overdue=request.overdue, pending=request.pending)
        return pb.FilingList(items=[_filing(f, late) for f, late in items], next_cursor=nxt or "")

    @grpc_errors
    async def FileFiling(self, request, context):
        who = await self._who(context)
        data = parse_request(StepIn, document_ref=request.document_ref or None, note=request.note or None)
        return _filing(await accounts.file(self.rt, who, request.id, data))

    @grpc_errors
    async def RecordPlatformException(self, request, context):
        who = await self._who(context)
        data = parse_request(PlatformExceptionIn, platform=request.platform, reason=request.reason)
        exc = await accounts.record_platform_exception(self.rt, who, request.unit_id, data)
        return pb.PlatformException(id=exc.id, unit_id=exc.unit_id, platform=exc.platform, reason=exc.reason)

    @grpc_errors
    async def ListPlatforms(self, request, context):
        await self._who(context)
        return _platforms(await accounts.approved_platforms(self.rt))

    @grpc_errors
    async def SetPlatformApproval(self, request, context):
        who = await self._who(context)
        data = parse_request(PlatformApprovalRequest, platform=request.platform,
                             approved=request.approved if request.HasField("approved") else None)
        return _platforms(await accounts.set_platform_approval(self.rt, who, data.platform, data.approved))

    # --- inspections (inspections.py) ----------------------------------------------------

    @grpc_errors
    async def OpenInspection(self, request, context):
        who = await self._who(context)
        data = parse_request(InspectionCreate, title=request.title, region_id=request.region_id, scope=request.scope,
                             sample_size=request.sample_size if request.HasField("sample_size") else None,
                             seed=request.seed if request.HasField("seed") else None)
        return _inspection(await inspections.open_inspection(self.rt, who, data))

    @grpc_errors
    async def GetInspection(self, request, context):
        who = await self._who(context)
        return _inspection(await inspections.get_inspection(self.rt, who, request.id))

    @grpc_errors
    async def ListInspections(self, request, context):
        who = await self._who(context)
        items, nxt = await inspections.list_inspections(self.rt, who, page_limit(request.limit),
                                                        request.cursor or None, request.region_id or None)
        return pb.InspectionList(items=[_inspection(i) for i in items], next_cursor=nxt or "")

    @grpc_errors
    async def RecordInspectionResult(self, request, context):
        who = await self._who(context)
        data = parse_request(ResultIn, account_id=request.account_id,
                             passed=request.passed if request.HasField("passed") else None,
                             veto=request.veto or None, notes=request.notes or None)
        return _entry(await inspections.record_result(self.rt, who, request.inspection_id, data))

    @grpc_errors
    async def OrderRectification(self, request, context):
        who = await self._who(context)
        deadline = _date(request.deadline, "deadline")
        data = parse_request(RectificationIn, account_id=request.account_id, deadline=deadline,
                             requirement=request.requirement)
        return _rectification(await inspections.order_rectification(self.rt, who, request.inspection_id, data))

    @grpc_errors
    async def RectificationDone(self, request, context):
        who = await self._who(context)
        data = parse_request(RectificationDoneIn, note=request.note)
        return _rectification(await inspections.rectification_done(self.rt, who, request.id, data))

    @grpc_errors
    async def ListRectifications(self, request, context):
        who = await self._who(context)
        items, nxt = await inspections.list_rectifications(
            self.rt, who, page_limit(request.limit), request.cursor or None, request.overdue,
            request.inspection_id or None, request.account_id or None)
        return pb.RectificationList(items=[_rectification(r) for r in items], next_cursor=nxt or "")

    @grpc_errors
    async def RecordMeasure(self, request, context):
        who = await self._who(context)
        data = parse_request(MeasureIn, account_id=request.account_id, kind=request.kind, note=request.note or None,
                             document_ref=request.document_ref or None)
        return _measure(await inspections.record_measure(self.rt, who, request.inspection_id, data))

    # --- activity (activity.py) ----------------------------------------------------------

    @grpc_errors
    async def GetAccountActivity(self, request, context):
        who = await self._who(context)
        return _activity(await activity.get_activity(self.rt, who, request.id))

    @grpc_errors
    async def ListDormantAccounts(self, request, context):
        who = await self._who(context)
        filters = parse_request(DormantFilters, stage=request.stage or None)
        items, nxt = await activity.list_dormant(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                 filters.stage, request.region_id or None, request.unit_id or None)
        return pb.DormantAccountList(items=[_dormant(d) for d in items], next_cursor=nxt or "")

    # --- notices (notices.py) -------------------------------------------------------------

    @grpc_errors
    async def ListNotices(self, request, context):
        who = await self._who(context)
        items, nxt = await notices.list_notices(self.rt, who, page_limit(request.limit), request.cursor or None,
                                                request.unread)
        return pb.NoticeList(items=[_notice(n) for n in items], next_cursor=nxt or "")

    @grpc_errors
    async def MarkNoticeRead(self, request, context):
        who = await self._who(context)
        return _notice(await notices.mark_read(self.rt, who, request.notice_id))

    # --- sign-in (signin_rest.py) --------------------------------------------------------

    @grpc_errors
    async def RevokeToken(self, request, context):
        """RFC 7009, like POST /v1/auth/revoke: no bearer token needed, unknown tokens answer alike."""
        data = parse_request(RevokeIn, token=request.token, token_type_hint=request.token_type_hint)
        await signin.revoke_token(self.rt, data.token, data.token_type_hint)
        return pb.RevokeTokenResponse()

    @grpc_errors
    async def RotateClientSecret(self, request, context):
        who = await self._who(context)
        issued = await signin.rotate_client_secret(self.rt, who, request.id)
        return pb.ClientSecret(client_id=issued.client_id, client_secret=issued.client_secret,
                               rotated_at=iso(issued.rotated_at) or "")

    @grpc_errors
    async def RevokeClientSecret(self, request, context):
        who = await self._who(context)
        await signin.revoke_client_secret(self.rt, who, request.id)
        return pb.RevokeClientSecretResponse()

    @grpc_errors
    async def IssueNatsCredentials(self, request, context):
        who = await self._who(context, allow_clients=True)
        data = parse_request(NatsCredentialsIn, public_key=request.public_key or None)
        authorization = dict(context.invocation_metadata() or ()).get("authorization")
        c = await nats_clients.issue_credentials(self.rt, who, data, nats_clients.token_issued_at(authorization))
        return pb.NatsCredentials(
            account_id=c.account_id, public_key=c.public_key, jwt=c.jwt, creds=c.creds or "", servers=c.servers,
            websocket=c.websocket or "", subjects=pb.NatsSubjects(**c.subjects.model_dump()),
            issued_at=iso(c.issued_at) or "", expires_at=iso(c.expires_at) or "")

    @grpc_errors
    async def ListSigningKeys(self, request, context):
        who = await self._who(context)
        return pb.SigningKeyList(items=[_key(k) for k in await signin.list_keys(self.rt, who)])

    @grpc_errors
    async def RotateSigningKeys(self, request, context):
        who = await self._who(context)
        data = parse_request(KeyRotate, grace_s=request.grace_s if request.HasField("grace_s") else None)
        rotated = await signin.rotate_keys(self.rt, who, data.grace_s)
        return pb.SigningKeysRotated(kid=rotated.kid, keys=[_key(k) for k in rotated.keys])

    @grpc_errors
    async def EnrolTotp(self, request, context):
        """Like POST /v1/auth/totp/enrol: a bearer token, or the enrolment ticket."""
        data = parse_request(TotpEnrolIn, enrolment_ticket=request.enrolment_ticket or None)
        who = await self._who(context) if not data.enrolment_ticket else None
        e = await signin.enrol_totp(self.rt, who, data.enrolment_ticket)
        return pb.TotpEnrolment(secret=e.secret, otpauth_uri=e.otpauth_uri, digits=e.digits, period=e.period,
                                algorithm=e.algorithm)

    @grpc_errors
    async def ConfirmTotp(self, request, context):
        data = parse_request(TotpConfirmIn, code=request.code, enrolment_ticket=request.enrolment_ticket or None)
        who = await self._who(context) if not data.enrolment_ticket else None
        return _totp(await signin.confirm_totp(self.rt, who, data.code, data.enrolment_ticket))

    @grpc_errors
    async def DisableTotp(self, request, context):
        who = await self._who(context)
        data = parse_request(TotpDisableIn, code=request.code)
        return _totp(await signin.disable_totp(self.rt, who, data.code))

    @grpc_errors
    async def ResetUserTotp(self, request, context):
        who = await self._who(context)
        return _totp(await signin.reset_totp(self.rt, who, request.id))

    @grpc_errors
    async def ListCalendarYears(self, request, context):
        who = await self._who(context)
        since = _optional(request, "from")
        return pb.CalendarYearList(items=[_calendar_year(y) for y in await calendar.list_years(
            self.rt, who, since, _optional(request, "to"))])

    @grpc_errors
    async def PutCalendarYear(self, request, context):
        who = await self._who(context)
        year = parse_request(YearPath, year=request.year).year
        notice = {"number": request.notice.number, "published_on": request.notice.published_on} \
            if request.HasField("notice") else None
        data = parse_request(CalendarYearIn, holidays=list(request.holidays), workdays=list(request.workdays),
                             notice=notice)
        return _calendar_year(await calendar.load_year(self.rt, who, year, data))


def add_to_server(rt: Runtime, server) -> None:
    pb_grpc.add_AccountServiceServicer_to_server(AccountServicer(rt), server)

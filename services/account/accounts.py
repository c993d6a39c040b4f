"""The ledger's accounts and their lifecycle (设立、备案、变更、关闭), one function per step.

Every step records who, when and the supporting document (AccountStep). Filings owed to
the regulator get a deadline in working days of the official calendar: 10 after opening
or a change, 5 after deregistration. A deadline reaching a year whose State Council notice is
not loaded yet is provisional (the holiday law's days off only) and is counted again, with an
entry in the account's history, once the notice is in (`recount_filings`); a date beyond every
year the calendar can know is refused (422 calendar_not_covered).
"""
from __future__ import annotations

import asyncio
import logging
import secrets

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import new_id, page, utcnow
from govmedia_kit.errors import conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime, periodically
from govmedia_kit import egress, workdays
from govmedia_kit.calendar_book import NoticeYear, stale_deadlines, why_moved
from govmedia_kit.workdays import local_date

from .models import (
    ACCOUNT_STATES, PLATFORMS, RECEIVING, Account, AccountCreate, AccountPublic, AccountStep, ApplicationCreate, ApprovedPlatform,
    ChangeIn, CloseIn, DeregisterIn, Filing, OpenIn, PlatformException, PlatformExceptionIn, Region, StepIn, Unit,
)
from .calendar_models import calendar_book
from . import nats_clients
from .notices import notify
from .regions import path_of, reach_filter, region_subtree
from .rules import AccountProposal, check_account_rules, check_name, check_responsible, require_state
from .tokens import hash_client_secret

log = logging.getLogger(__name__)

# Who may act for a unit in its accounts' lifecycle, and who decides.
UNIT_STAFF = ("editor", "section_head", "deputy", "principal", "chief_editor")
PRINCIPAL = ("principal",)
# Cross-unit roles, each within its region subtree (regions.py).
LEDGER_KEEPERS = ("regulator", "ops")  # keep the ledger
READERS = ("regulator", "supervisor", "ops")  # read the accounts

FILING_WORKDAYS = {"opening": 10, "change": 10, "closing": 5}
FILING_KINDS = {"opening": "开设", "change": "变更", "closing": "关闭"}


# --- reading -------------------------------------------------------------------------------

async def get_account(rt: Runtime, who: Principal, account_id: str) -> AccountPublic:
    async with rt.db.session() as s:
        account = await _account(s, account_id)
        if who.account_id and who.account_id != account.id:
            raise forbidden("other_account", "客户端只能查看自己的账号")
        await _require_reach(s, who, account, READERS)
    return AccountPublic.of(account)


async def history(rt: Runtime, who: Principal, account_id: str) -> list[AccountStep]:
    async with rt.db.session() as s:
        account = await _account(s, account_id)
        await _require_reach(s, who, account, READERS)
        return list((await s.exec(select(AccountStep).where(AccountStep.account_id == account_id)
                                  .order_by(AccountStep.id))).all())


async def list_filings(rt: Runtime, who: Principal, limit: int, cursor: str | None, overdue: bool = False,
                       pending: bool = False) -> tuple[list[tuple[Filing, bool]], str | None]:
    """Filings for the regulator; `overdue` = not filed and past the deadline."""
    who.require(*READERS)
    today = local_date(utcnow())
    stmt = select(Filing).order_by(Filing.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(Filing.id > cursor)
    if pending or overdue:
        stmt = stmt.where(Filing.filed_on.is_(None))
    if overdue:
        stmt = stmt.where(Filing.due_on < today)
    reach = reach_filter(who, Account.unit_id, *READERS)
    if reach is not None:
        stmt = stmt.where(Filing.account_id.in_(select(Account.id).where(reach)))
    async with rt.db.session() as s:
        items, nxt = page(list((await s.exec(stmt)).all()), limit)
    return [(f, f.filed_on is None and f.due_on < today) for f in items], nxt


async def list_accounts(rt: Runtime, who: Principal, limit: int, cursor: str | None, region_id: str | None = None,
                        unit_id: str | None = None, platform: str | None = None, status: str | None = None
                        ) -> tuple[list[Account], str | None]:
    """A page of the ledger: `region_id` means that region and every region below it.
    The regulator, supervisor and ops see their region subtree, everyone else their own unit."""
    check_filters(platform, status)
    stmt = select(Account).order_by(Account.id).limit(limit + 1)
    reach = reach_filter(who, Account.unit_id, *READERS)
    if reach is not None:
        stmt = stmt.where(reach)
    if cursor:
        stmt = stmt.where(Account.id > cursor)
    async with rt.db.session() as s:
        if region_id:
            stmt = stmt.where(Account.region_id.in_(await region_subtree(s, region_id)))
        for column, value in ((Account.unit_id, unit_id), (Account.platform, platform), (Account.status, status)):
            if value:
                stmt = stmt.where(column == value)
        return page(list((await s.exec(stmt)).all()), limit)


def check_filters(platform: str | None, status: str | None) -> None:
    """An unknown platform or status is a mistake to be told, not an empty ledger (both transports)."""
    for field, value, known in (("platform", platform, PLATFORMS), ("status", status, ACCOUNT_STATES)):
        if value and value not in known:
            raise invalid("validation_failed", "请求参数不合法",
                          [{"field": field, "problem": f"one of {list(known)}", "type": "literal_error"}])


# --- registering an existing account (DESIGN.md §5) -----------------------------------------

async def register_account(rt: Runtime, who: Principal, data: AccountCreate) -> AccountPublic:
    """An account that exists already enters the ledger active; the registration by the
    regulator is its filing."""
    who.require(*LEDGER_KEEPERS)
    client_secret = None
    await _check_webhook_url(rt, data.delivery)
    async with rt.unit_of_work() as s:
        unit, region = await _unit_and_region(s, data.unit_id)
        who.require_unit(unit.id, region.path, cross_unit_roles=LEDGER_KEEPERS)
        await _check_rules(s, unit, region, data.platform, data.name, data.responsible.model_dump())
        today = local_date(utcnow())
        account = Account(
            unit_id=unit.id, region_id=unit.region_id, platform=data.platform, name=data.name, handle=data.handle,
            opened_on=data.opened_on, responsible=data.responsible.model_dump(), status="active", filed_on=today,
        )
        filing = await _owed_filing(s, account, "opening", data.opened_on)
        client_secret = _set_delivery(account, data.delivery)
        s.add(account)
        await _flush_unique(s, data.platform, data.handle)
        filing.account_id, filing.filed_on, filing.filed_by = account.id, today, who.subject
        s.add(filing)
        await _step(s, account, who, "registered", None, None, {"handle": data.handle})
        await _announce_state(rt, s, account, unit)
    return AccountPublic.of(account, client_secret)


# --- opening: apply → approve → open → file --------------------------------------------------

async def apply(rt: Runtime, who: Principal, data: ApplicationCreate) -> AccountPublic:
    """An application to open an account, decided by the unit's leadership meeting."""
    who.require(*UNIT_STAFF, "ops")
    await _check_webhook_url(rt, data.delivery)
    async with rt.unit_of_work() as s:
        unit, region = await _unit_and_region(s, data.unit_id)
        who.require_unit(unit.id, region.path)
        await _check_rules(s, unit, region, data.platform, data.name, data.responsible.model_dump())
        account = Account(unit_id=unit.id, region_id=unit.region_id, platform=data.platform, name=data.name,
                          responsible=data.responsible.model_dump(), reason=data.reason, meeting_ref=data.meeting_ref,
                          status="applied")
        client_secret = _set_delivery(account, data.delivery)
        s.add(account)
        await s.flush()
        await _step(s, account, who, "applied", data.document_ref, data.reason, {"meeting_ref": data.meeting_ref})
    return AccountPublic.of(account, client_secret)


async def approve_opening(rt: Runtime, who: Principal, account_id: str, data: StepIn) -> AccountPublic:
    async with rt.unit_of_work() as s:
        account = await _for_principal(s, who, account_id)
        require_state("批准开设", account.status, ("applied",))
        account.status = "approved"
        await _step(s, account, who, "opening_approved", data.document_ref, data.note)
    return AccountPublic.of(account)


async def mark_opened(rt: Runtime, who: Principal, account_id: str, data: OpenIn) -> AccountPublic:
    """Opened on the platform: the filing falls due 10 working days later."""
    async with rt.unit_of_work() as s:
        account = await _for_staff(s, who, account_id)
        require_state("登记开通", account.status, ("approved",))
        account.handle, account.opened_on, account.status = data.handle, data.opened_on, "opened"
        filing = await _owed_filing(s, account, "opening", data.opened_on)
        await _flush_unique(s, account.platform, data.handle)
        s.add(filing)
        await _step(s, account, who, "opened", data.document_ref, data.note,
                    {"handle": data.handle, "opened_on": data.opened_on.isoformat()})
    return AccountPublic.of(account)


async def file(rt: Runtime, who: Principal, filing_id: str, data: StepIn) -> Filing:
    """The regulator files (备案): an opening makes the account active, a closing closes it."""
    who.require(*LEDGER_KEEPERS)
    revoked = 0
    async with rt.unit_of_work() as s:
        filing = (await s.exec(select(Filing).where(Filing.id == filing_id).with_for_update())).first()
        if filing is None:
            raise not_found("filing", filing_id)
        account = await _account(s, filing.account_id)
        await _require_reach(s, who, account, LEDGER_KEEPERS)
        if filing.filed_on is not None:
            raise conflict("already_filed", "该事项已备案", {"filed_on": filing.filed_on.isoformat()})
        today = local_date(utcnow())
        filing.filed_on, filing.filed_by, filing.document_ref = today, who.subject, data.document_ref
        if filing.kind == "opening":
            require_state("开设备案", account.status, ("opened",))
            account.status, account.filed_on = "active", today
        elif filing.kind == "closing":
            require_state("关闭备案", account.status, ("deregistered",))
            account.status, account.closed_on = "closed", today
            revoked = await nats_clients.revoke_keys(s, account.id, "closed")  # deregistering did; to be sure
        await _step(s, account, who, f"{filing.kind}_filed", data.document_ref, data.note, {"filing_id": filing.id})
        await _announce_state(rt, s, account)
    if revoked:
        nats_clients.push_soon(rt)
    return filing


# --- changes ------------------------------------------------------------------------------

async def change(rt: Runtime, who: Principal, account_id: str, data: ChangeIn) -> AccountPublic:
    """A change of name, responsible people or delivery: applied, recorded and owed a filing."""
    await _check_webhook_url(rt, data.delivery)
    async with rt.unit_of_work() as s:
        account = await _account(s, account_id, for_update=True)
        who.require(*PRINCIPAL, "chief_editor", *LEDGER_KEEPERS)
        await _require_reach(s, who, account, LEDGER_KEEPERS)
        require_state("变更", account.status, ("opened", "active"))
        changed: dict = {}
        client_secret = None  # a webhook account turned stream or nats gets its first client secret, shown once
        revoked = 0
        if data.name is not None and data.name != account.name:
            unit, region = await _unit_and_region(s, account.unit_id)
            check_name(_proposal(unit, region, account.platform, data.name, account.responsible))
            changed["name"] = {"from": account.name, "to": data.name}
            account.name = data.name
        if data.responsible is not None and data.responsible.model_dump() != account.responsible:
            new = data.responsible.model_dump()
            check_responsible(new)
            changed["responsible"] = {"from": account.responsible, "to": new}
            account.responsible = new
        if data.delivery is not None:
            changed["delivery"] = {"from": account.delivery_mode, "to": data.delivery.mode}  # never the secret
            if account.delivery_mode == "nats" and data.delivery.mode != "nats":
                revoked = await nats_clients.revoke_keys(s, account.id, "delivery_changed")
            client_secret = _set_delivery(account, data.delivery, keep_client_secret=True)
        if not changed:
            raise invalid("nothing_to_change", "没有需要变更的内容")
        s.add(await _owed_filing(s, account, "change", local_date(utcnow())))
        await _step(s, account, who, "changed", data.document_ref, data.note, changed)
        await _announce_state(rt, s, account)
    if revoked:
        nats_clients.push_soon(rt)  # the servers disconnect its NATS users now
    return AccountPublic.of(account, client_secret)


# --- closing: request → approve (announcement) → deregister → file ----------------------------

async def request_closing(rt: Runtime, who: Principal, account_id: str, data: CloseIn) -> AccountPublic:
    async with rt.unit_of_work() as s:
        account = await _account(s, account_id, for_update=True)
        who.require(*UNIT_STAFF, *LEDGER_KEEPERS)
        await _require_reach(s, who, account, LEDGER_KEEPERS)
        require_state("申请关闭", account.status, ("active", "opened"))
        account.status, account.close_reason = "closing", data.reason
        await _step(s, account, who, "closing_requested", data.document_ref, data.note or data.reason,
                    {"reason": data.reason})
    return AccountPublic.of(account)


async def approve_closing(rt: Runtime, who: Principal, account_id: str, data: StepIn) -> AccountPublic:
    """The principal approves; the public announcement goes out to the account through dispatch."""
    async with rt.unit_of_work() as s:
        account = await _for_principal(s, who, account_id)
        require_state("批准关闭", account.status, ("closing",))
        account.status = "close_approved"
        item_id = new_id()
        title = f"关于注销“{account.name}”账号的公告"
        body = (f"因{account.close_reason}，经单位主要负责人批准，本账号将依规注销，今后不再更新。"
                f"相关信息请关注本单位其他官方渠道。特此公告。")
        await rt.outbox.emit(s, "govmedia.account.announcement.requested", ev.AccountAnnouncement(
            account_id=account.id, item_id=item_id, unit_id=account.unit_id, title=title, body=body), account.id)
        await _step(s, account, who, "closing_approved", data.document_ref, data.note, {"announcement_item_id": item_id})
    return AccountPublic.of(account)


async def deregister(rt: Runtime, who: Principal, account_id: str, data: DeregisterIn) -> AccountPublic:
    """Deregistered on the platform: nothing more is delivered; the filing falls due in 5 working days."""
    async with rt.unit_of_work() as s:
        account = await _for_staff(s, who, account_id)
        require_state("登记注销", account.status, ("close_approved",))
        account.status, account.deregistered_on = "deregistered", data.deregistered_on
        s.add(await _owed_filing(s, account, "closing", data.deregistered_on))
        await _step(s, account, who, "deregistered", data.document_ref, data.note,
                    {"deregistered_on": data.deregistered_on.isoformat()})
        await _announce_state(rt, s, account)
        revoked = await nats_clients.revoke_keys(s, account.id, "deregistered")
    if revoked:
        nats_clients.push_soon(rt)
    return AccountPublic.of(account)


# --- the province's rules, kept by the regulator ---------------------------------------------

async def record_platform_exception(rt: Runtime, who: Principal, unit_id: str, data: PlatformExceptionIn
                                    ) -> PlatformException:
    who.require(*LEDGER_KEEPERS)
    async with rt.unit_of_work() as s:
        unit, region = await _unit_and_region(s, unit_id)
        who.require_unit(unit.id, region.path, cross_unit_roles=LEDGER_KEEPERS)
        exc = PlatformException(unit_id=unit_id, platform=data.platform, reason=data.reason, recorded_by=who.subject)
        s.add(exc)
        try:
            await s.flush()
        except IntegrityError:
            raise conflict("exception_exists", "该单位在此平台的例外已登记", {"platform": data.platform})
    return exc


async def approved_platforms(rt: Runtime) -> dict[str, bool]:
    async with rt.db.session() as s:
        rows = {p.platform: p.approved for p in (await s.exec(select(ApprovedPlatform))).all()}
    # A platform never decided on is approved: the list starts as every platform the design knows.
    return {p: rows.get(p, True) for p in PLATFORMS}


async def set_platform_approval(rt: Runtime, who: Principal, platform: str, approved: bool) -> dict[str, bool]:
    who.require_province("regulator")  # the province's list
    async with rt.unit_of_work() as s:
        row = await s.get(ApprovedPlatform, platform) or ApprovedPlatform(platform=platform)
        row.approved, row.updated_by, row.updated_at = approved, who.subject, utcnow()
        s.add(row)
    return await approved_platforms(rt)


# --- the overdue watch ----------------------------------------------------------------------

async def report_overdue_filings(rt: Runtime) -> int:
    """Emit govmedia.account.filing.overdue once for each filing past its deadline."""
    today = local_date(utcnow())
    async with rt.unit_of_work() as s:
        rows = (await s.exec(select(Filing, Account).join(Account, Account.id == Filing.account_id).where(
            Filing.filed_on.is_(None), Filing.due_on < today, Filing.overdue_reported_at.is_(None))
            # Replicas check at the same moment: each filing is reported by one of them.
            .with_for_update(skip_locked=True, of=Filing))).all()
        for filing, account in rows:
            filing.overdue_reported_at = utcnow()
            s.add(filing)
            await rt.outbox.emit(s, "govmedia.account.filing.overdue", ev.FilingOverdue(
                filing_id=filing.id, account_id=account.id, unit_id=account.unit_id, kind=filing.kind,
                due_on=filing.due_on.isoformat()), account.id)
            what = FILING_KINDS[filing.kind]
            await notify(s, "filing.overdue", filing.id, account.unit_id, f"“{account.name}”的{what}备案已逾期",
                         f"账号“{account.name}”的{what}备案应于{filing.due_on.isoformat()}前完成，至今未备案。",
                         unit_roles=("principal",), region_roles=("regulator",), account_id=account.id)
    if rows:
        log.warning("%d filings are overdue", len(rows))
    return len(rows)


async def overdue_watch(rt: Runtime, stop: asyncio.Event) -> None:
    """A worker: checks at start-up and then every `filing_check_interval_s`."""
    await periodically(lambda: report_overdue_filings(rt), rt.settings.filing_check_interval_s, stop,
                       "overdue filing check")


# --- filing deadlines on the calendar ---------------------------------------------------------

async def _owed_filing(s: AsyncSession, account: Account, kind: str, counted_from) -> Filing:
    """A filing owed `FILING_WORKDAYS[kind]` working days after `counted_from`, on the calendar
    with ops' newest notices; an opening's deadline is the account's `filing_due` too."""
    cal = await calendar_book.refresh(s)
    filing = Filing(account_id=account.id, kind=kind, counted_from=counted_from)
    _count(filing, cal)
    if kind == "opening":
        account.filing_due, account.filing_calendar = filing.due_on, filing.calendar
    return filing


def _count(filing: Filing, cal: workdays.WorkCalendar) -> None:
    filing.due_on = cal.add_workdays(filing.counted_from, FILING_WORKDAYS[filing.kind])
    filing.calendar = cal.basis(filing.counted_from, filing.due_on)
    filing.calendar_rev = cal.revision


async def recount_filings(rt: Runtime, batch: int = 200) -> int:
    """Count again every filing not yet made whose deadline rests on a year that changed since
    (a provisional year made official, or a corrected notice); a moved deadline goes into the
    account's history and onto the bus (govmedia.account.filing.recomputed). Answers how many moved."""
    moved = 0
    while True:
        async with rt.unit_of_work() as s:
            cal = await calendar_book.refresh(s)
            notices = await calendar_book.years(s)
            rows = (await s.exec(select(Filing, Account).join(Account, Account.id == Filing.account_id).where(
                Filing.filed_on.is_(None), Filing.counted_from.is_not(None),
                stale_deadlines(cal, notices, basis=Filing.calendar, revision=Filing.calendar_rev,
                                last_day=Filing.due_on, starts_before=lambda day: Filing.counted_from < day))
                .order_by(Filing.id).limit(batch).with_for_update(skip_locked=True, of=Filing))).all()
            for filing, account in rows:
                moved += await _recount(rt, s, filing, account, cal, notices)
        if len(rows) < batch:
            break
    if moved:
        log.info("%d filing deadlines recomputed on the calendar of revision %d", moved, cal.revision)
        await report_overdue_filings(rt)  # a deadline moved into the past is reported now, once
    return moved


async def _recount(rt: Runtime, s: AsyncSession, filing: Filing, account: Account, cal: workdays.WorkCalendar,
                   notices: list[NoticeYear]) -> bool:
    old = filing.due_on
    _count(filing, cal)
    s.add(filing)
    if filing.kind == "opening":
        account.filing_due, account.filing_calendar = filing.due_on, filing.calendar
        s.add(account)
    if filing.due_on == old:
        return False
    if filing.overdue_reported_at is not None and filing.due_on >= local_date(utcnow()):
        filing.overdue_reported_at = None  # no longer overdue: reported again if it becomes so
    notice, why = why_moved(notices, filing.counted_from.year, max(old, filing.due_on).year,
                            filing.calendar == workdays.PROVISIONAL)
    what = FILING_KINDS[filing.kind]
    s.add(AccountStep(account_id=account.id, action="deadline_recomputed", actor_id="system", note=(
        f"{what}备案期限重新计算：{old.isoformat()} → {filing.due_on.isoformat()}{why}"),
        data={"filing_id": filing.id, "kind": filing.kind, "from": old.isoformat(), "to": filing.due_on.isoformat(),
              "calendar": filing.calendar, "notice": notice}))
    await rt.outbox.emit(s, "govmedia.account.filing.recomputed", ev.DeadlineRecomputed(
        about_id=filing.id, kind=filing.kind, unit_id=account.unit_id, old_due=old.isoformat(),
        new_due=filing.due_on.isoformat(), calendar=filing.calendar, notice_number=notice,
        calendar_revision=cal.revision), account.id)
    return True


async def recount_watch(rt: Runtime, stop: asyncio.Event) -> None:
    """A worker: filings counted again whenever the calendar changes (`ACCOUNT_CALENDAR_POLL_S`)."""
    await calendar_book.watch(rt, stop, lambda: recount_filings(rt), rt.settings.calendar_poll_s)


# --- helpers --------------------------------------------------------------------------------

async def _account(s: AsyncSession, account_id: str, for_update: bool = False) -> Account:
    stmt = select(Account).where(Account.id == account_id)
    account = (await s.exec(stmt.with_for_update() if for_update else stmt)).first()
    if account is None:
        raise not_found("account", account_id)
    return account


async def _for_principal(s: AsyncSession, who: Principal, account_id: str) -> Account:
    """The account, for its unit's principal (主要负责人) to decide on."""
    account = await _account(s, account_id, for_update=True)
    who.require(*PRINCIPAL).require_unit(account.unit_id, cross_unit_roles=())
    return account


async def _for_staff(s: AsyncSession, who: Principal, account_id: str) -> Account:
    account = await _account(s, account_id, for_update=True)
    who.require(*UNIT_STAFF, "ops")
    await _require_reach(s, who, account, ("ops",))
    return account


async def _require_reach(s: AsyncSession, who: Principal, account: Account, cross_unit_roles: tuple[str, ...]) -> None:
    """The account is of the caller's unit, or in the region subtree of one of their cross-unit roles."""
    if account.unit_id != who.unit_id:
        who.require_unit(account.unit_id, await path_of(s, account.region_id), cross_unit_roles=cross_unit_roles)


async def _unit_and_region(s: AsyncSession, unit_id: str) -> tuple[Unit, Region]:
    unit = await s.get(Unit, unit_id)
    if unit is None:
        raise invalid("unit_not_found", "所属单位不存在", {"unit_id": unit_id})
    return unit, await s.get(Region, unit.region_id)


def _proposal(unit: Unit, region: Region, platform: str, name: str, responsible: dict) -> AccountProposal:
    return AccountProposal(unit_name=unit.name, region_name=region.name if region else "",
                           short_names=list(unit.short_names or []), platform=platform, name=name,
                           responsible=responsible)


async def _check_rules(s: AsyncSession, unit: Unit, region: Region, platform: str, name: str, responsible: dict) -> None:
    refused = {p.platform for p in (await s.exec(select(ApprovedPlatform))).all() if not p.approved}
    open_count = (await s.exec(select(func.count()).select_from(Account).where(
        Account.unit_id == unit.id, Account.platform == platform, Account.status != "closed"))).one()
    exception = (await s.exec(select(PlatformException).where(
        PlatformException.unit_id == unit.id, PlatformException.platform == platform))).first()
    check_account_rules(_proposal(unit, region, platform, name, responsible),
                        approved_platforms=set(PLATFORMS) - refused, open_on_platform=open_count,
                        exception_recorded=exception is not None)


async def _check_webhook_url(rt: Runtime, delivery) -> None:
    """A webhook URL may not lead inside (SSRF: govmedia_kit/egress.py); checked before the
    transaction, since it may resolve a name. 422 webhook_url_forbidden, nothing stored."""
    if delivery is not None and delivery.mode == "webhook":
        await egress.policy(rt.settings).check_url(str(delivery.url))


def _set_delivery(account: Account, delivery, keep_client_secret: bool = False) -> str | None:
    """Apply delivery settings; a new stream or nats account gets a client secret, shown once
    (one already held is kept when the delivery changes between them)."""
    account.delivery_mode = delivery.mode
    if delivery.mode == "webhook":
        account.webhook_url, account.webhook_secret = str(delivery.url), delivery.secret
        return None
    account.webhook_url = account.webhook_secret = None
    if keep_client_secret and account.client_secret_hash:
        return None
    secret = secrets.token_urlsafe(32)
    account.client_secret_hash = hash_client_secret(secret)
    return secret


async def _flush_unique(s: AsyncSession, platform: str, handle: str) -> None:
    try:
        await s.flush()
    except IntegrityError:
        raise conflict("account_exists", "该平台上此账号已登记", {"platform": platform, "handle": handle})


async def _step(s: AsyncSession, account: Account, who: Principal, action: str, document_ref: str | None,
                note: str | None, data: dict | None = None) -> None:
    account.updated_at = utcnow()
    s.add(account)
    s.add(AccountStep(account_id=account.id, action=action, actor_id=who.subject, document_ref=document_ref,
                      note=note, data=data or {}))


async def _announce_state(rt: Runtime, s: AsyncSession, account: Account, unit: Unit | None = None) -> None:
    """Tell the read models (dispatch…) what the account is now; only receiving states are
    'active' to them, so a deregistered or closed account receives nothing more."""
    unit = unit or await s.get(Unit, account.unit_id)
    region = await s.get(Region, account.region_id)
    receiving = account.status in RECEIVING
    subject = {"active": "activated", "deregistered": "closed", "closed": "closed"}.get(account.status, "updated")
    await rt.outbox.emit(s, f"govmedia.account.account.{subject}", ev.AccountChanged(
        account_id=account.id, unit_id=account.unit_id, region_id=account.region_id, platform=account.platform,
        name=account.name, handle=account.handle or "", status="active" if receiving else account.status,
        delivery_mode=account.delivery_mode, webhook_url=account.webhook_url or "",
        webhook_secret=account.webhook_secret or "", unit_kind=unit.kind if unit else "",
        region_path=region.path if region else ""), account.id)


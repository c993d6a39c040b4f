"""Inspections (检查): the regulator's check rounds over the ledger, results with the national
single-item vetoes, the pass rate, rectification by a deadline (限时整改) and measures
(deletion order, interview 约谈, warning, public notice 通报, closure order).

Who may do what:
- the regulator opens rounds, records results, orders rectification and records measures;
  ops read everything (they answer for the platform, not for the checks);
- a unit's people see a round only through their own unit's accounts: `GET /v1/inspections`
  lists the rounds that include one of them, `GET /v1/inspections/{id}` shows only those
  accounts, their rectifications and measures, and the figures (checked, passed, pass rate)
  over those accounts; a round without any of their accounts answers 403 `other_unit`.
  We filter rather than refuse so a unit can see its own result and what it must rectify;
- a rectification is reported done by the account's unit (principal, chief editor, editor)
  or by the regulator on its behalf.

Everything records who and when; a re-recorded result replaces the current one and the
replaced one is kept in `previous`. An overdue rectification is flagged once and announced
as `govmedia.account.rectification.overdue`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import Annotated

from fastapi import APIRouter, Query
from govmedia.events.v1 import events_pb2 as ev
from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import CurrentPrincipal, Principal
from govmedia_kit.db import as_utc, page, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid
from govmedia_kit.runtime import Runtime, RuntimeDep, periodically
from govmedia_kit.workdays import local_date

from .inspections_models import (
    INSPECTED_STATES,
    EntryPublic,
    Inspection,
    InspectionAccount,
    InspectionCreate,
    InspectionMeasure,
    InspectionPublic,
    InspectionSummary,
    MeasureIn,
    MeasurePublic,
    Rectification,
    RectificationDoneIn,
    RectificationIn,
    RectificationPublic,
    ResultIn,
    ResultPublic,
)
from .notices import notify
from .regions import path_of, reach_filter, region_subtree, unit_path
from .models import Account, Page

log = logging.getLogger(__name__)

# Each within the region subtree it reaches (regions.py).
INSPECTOR = ("regulator",)  # opens rounds, records results, orders rectification and measures
READERS = ("regulator", "ops")  # see the accounts of the rounds
RECTIFIERS = ("principal", "chief_editor", "editor")  # report their own unit's rectification done
OVERDUE_SUBJECT = "govmedia.account.rectification.overdue"
OPENED_SUBJECT = "govmedia.account.inspection.opened"
RESULT_SUBJECT = "govmedia.account.inspection.result"
MEASURE_SUBJECT = "govmedia.account.inspection.measure"
RECTIFICATION_SUBJECT = "govmedia.account.rectification.{state}"  # ordered | done
MEASURE_NAMES = {"deletion_order": "责令删除", "interview": "约谈", "warning": "警告", "public_notice": "通报",
                 "closure_order": "责令关停"}
_WAKE = "rectification_wake"  # rt.state key: wakes the worker when an order is already overdue


# --- rounds -------------------------------------------------------------------------------

async def open_inspection(rt: Runtime, who: Principal, data: InspectionCreate) -> InspectionPublic:
    """A round over every running account of a region subtree, or a random sample of it.
    The sample is drawn from the accounts in id order with `random.Random(seed)`, so the same
    ledger and seed give the same sample; without a seed one is drawn and stored."""
    who.require(*INSPECTOR)
    if data.scope == "sample":
        if data.sample_size is None:
            raise invalid("sample_size_required", "抽查须指定抽查数量")
        if data.sample_size < 1:
            raise invalid("sample_size_invalid", "抽查数量至少为 1", {"sample_size": data.sample_size})
    elif data.sample_size is not None:
        raise invalid("sample_size_not_allowed", "全面检查不能指定抽查数量", {"scope": data.scope})
    async with rt.unit_of_work() as s:
        who.require_region(await path_of(s, data.region_id), cross_unit_roles=INSPECTOR)
        regions = await region_subtree(s, data.region_id)
        population = list((await s.exec(select(Account).where(
            Account.region_id.in_(regions), Account.status.in_(INSPECTED_STATES)).order_by(Account.id))).all())
        seed = None
        if data.scope == "all":
            if not population:
                raise invalid("no_accounts_to_inspect", "该地区没有可检查的账号", {"region_id": data.region_id})
            chosen = population
        else:
            if data.sample_size > len(population):
                raise invalid("sample_size_exceeds_population", "抽查数量超过该地区可检查的账号数",
                              {"sample_size": data.sample_size, "population": len(population)})
            seed = data.seed if data.seed is not None else secrets.randbelow(2**31)
            chosen = sorted(random.Random(seed).sample(population, data.sample_size), key=lambda a: a.id)
        inspection = Inspection(title=data.title, region_id=data.region_id, scope=data.scope,
                                sample_size=data.sample_size, seed=seed, population=len(population),
                                opened_by=who.subject)
        s.add(inspection)
        await s.flush()
        for account in chosen:
            s.add(InspectionAccount(inspection_id=inspection.id, account_id=account.id, unit_id=account.unit_id))
        await s.flush()
        await rt.outbox.emit(s, OPENED_SUBJECT, ev.InspectionOpened(
            inspection_id=inspection.id, title=inspection.title, region_id=inspection.region_id, scope=inspection.scope,
            accounts=len(chosen), population=len(population), opened_by=who.subject), inspection.id)
        return await _view(s, who, inspection)


async def get_inspection(rt: Runtime, who: Principal, inspection_id: str) -> InspectionPublic:
    async with rt.db.session() as s:
        return await _view(s, who, await _inspection(s, inspection_id))


async def list_inspections(rt: Runtime, who: Principal, limit: int, cursor: str | None,
                           region_id: str | None = None) -> tuple[list[InspectionSummary], str | None]:
    """Rounds with their figures, counting the accounts the caller reaches: a unit's people
    see the rounds that include their accounts."""
    stmt = select(Inspection).order_by(Inspection.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(Inspection.id > cursor)
    if region_id:
        stmt = stmt.where(Inspection.region_id == region_id)
    reach = reach_filter(who, InspectionAccount.unit_id, *READERS)
    if reach is not None:
        stmt = stmt.where(Inspection.id.in_(select(InspectionAccount.inspection_id).where(reach)))
    async with rt.db.session() as s:
        rounds, nxt = page(list((await s.exec(stmt)).all()), limit)
        counts: dict[str, dict] = {r.id: {} for r in rounds}
        if rounds:
            q = (select(InspectionAccount.inspection_id, InspectionAccount.passed, func.count())
                 .where(InspectionAccount.inspection_id.in_(list(counts)))
                 .group_by(InspectionAccount.inspection_id, InspectionAccount.passed))
            if reach is not None:
                q = q.where(reach)
            for rid, passed, n in (await s.exec(q)).all():
                counts[rid][passed] = n
    return [_summary(r, counts[r.id].get(True, 0), counts[r.id].get(False, 0), sum(counts[r.id].values()))
            for r in rounds], nxt


# --- results ------------------------------------------------------------------------------

async def record_result(rt: Runtime, who: Principal, inspection_id: str, data: ResultIn) -> EntryPublic:
    """Pass or fail for one account of the round. A failure names a veto or says why in the
    notes; a pass carries no veto. Recording again replaces the result and keeps the old one."""
    who.require(*INSPECTOR)
    if data.passed and data.veto:
        raise invalid("veto_on_pass", "合格的账号不能有否决项", {"veto": data.veto})
    if not data.passed and not data.veto and not data.notes:
        raise invalid("failure_reason_required", "不合格须写明否决项或说明")
    async with rt.unit_of_work() as s:
        await _inspection(s, inspection_id)
        entry = await _entry(s, inspection_id, data.account_id, who, for_update=True)
        if entry.passed is not None:
            entry.previous = [*entry.previous, _result_record(entry)]
        entry.passed, entry.veto, entry.notes = data.passed, data.veto, data.notes
        entry.recorded_by, entry.recorded_at = who.subject, utcnow()
        s.add(entry)
        await s.flush()
        await rt.outbox.emit(s, RESULT_SUBJECT, ev.InspectionResult(
            inspection_id=inspection_id, account_id=entry.account_id, unit_id=entry.unit_id, passed=entry.passed,
            veto=entry.veto or "", recorded_by=who.subject), entry.account_id)
        account = await s.get(Account, entry.account_id)
        return _entry_public(entry, account)


# --- rectification ------------------------------------------------------------------------

async def order_rectification(rt: Runtime, who: Principal, inspection_id: str,
                              data: RectificationIn) -> RectificationPublic:
    """Rectification by a deadline for a failed account; one open order per account and round.
    A deadline already past is accepted (an order given on paper and recorded late) and is
    flagged overdue at once."""
    who.require(*INSPECTOR)
    async with rt.unit_of_work() as s:
        await _inspection(s, inspection_id)
        entry = await _entry(s, inspection_id, data.account_id, who, for_update=True)
        _require_failed(entry)
        open_order = (await s.exec(select(Rectification).where(
            Rectification.inspection_id == inspection_id, Rectification.account_id == data.account_id,
            Rectification.done_at.is_(None)))).first()
        if open_order is not None:
            raise conflict("rectification_open", "该账号已有未完成的整改", {"rectification_id": open_order.id})
        rect = Rectification(inspection_id=inspection_id, account_id=entry.account_id, unit_id=entry.unit_id,
                             deadline=data.deadline, requirement=data.requirement, ordered_by=who.subject)
        s.add(rect)
        await s.flush()
        await _rectification_event(rt, s, rect, "ordered", who.subject)
        account = await s.get(Account, rect.account_id)
        await notify(s, "rectification.ordered", rect.id, rect.unit_id, f"账号“{account.name}”须限期整改",
                     f"检查不合格，须于{rect.deadline.isoformat()}前完成整改：{rect.requirement}",
                     unit_roles=("principal", "chief_editor"), account_id=rect.account_id)
    if rect.deadline < local_date(utcnow()):
        _wake(rt).set()
    return _rect_public(rect)


async def rectification_done(rt: Runtime, who: Principal, rectification_id: str,
                             data: RectificationDoneIn) -> RectificationPublic:
    """The account's unit reports the rectification done (or the regulator records it)."""
    who.require(*INSPECTOR, *RECTIFIERS)
    async with rt.unit_of_work() as s:
        rect = (await s.exec(select(Rectification).where(Rectification.id == rectification_id)
                             .with_for_update())).first()
        if rect is None:
            raise AppError(404, "rectification_not_found", "未找到整改记录", {"id": rectification_id})
        who.require_unit(rect.unit_id, await unit_path(s, rect.unit_id), cross_unit_roles=INSPECTOR)
        if rect.done_at is not None:
            raise conflict("rectification_done", "该整改已完成", {"done_at": rect.done_at.isoformat()})
        rect.done_at, rect.done_by, rect.done_note = utcnow(), who.subject, data.note
        s.add(rect)
        await _rectification_event(rt, s, rect, "done", who.subject)
    return _rect_public(rect)


async def list_rectifications(rt: Runtime, who: Principal, limit: int, cursor: str | None, overdue: bool = False,
                              inspection_id: str | None = None, account_id: str | None = None
                              ) -> tuple[list[RectificationPublic], str | None]:
    """`overdue=true`: not done and past the deadline. A unit's people see their own unit's."""
    stmt = select(Rectification).order_by(Rectification.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(Rectification.id > cursor)
    reach = reach_filter(who, Rectification.unit_id, *READERS)
    if reach is not None:
        stmt = stmt.where(reach)
    if inspection_id:
        stmt = stmt.where(Rectification.inspection_id == inspection_id)
    if account_id:
        stmt = stmt.where(Rectification.account_id == account_id)
    if overdue:
        stmt = stmt.where(Rectification.done_at.is_(None), Rectification.deadline < local_date(utcnow()))
    async with rt.db.session() as s:
        items, nxt = page(list((await s.exec(stmt)).all()), limit)
    return [_rect_public(r) for r in items], nxt


async def report_overdue_rectifications(rt: Runtime) -> int:
    """Flag each rectification past its deadline and not done, once, with its event.
    Rows another replica is flagging are skipped (PostgreSQL), so none is announced twice."""
    today = local_date(utcnow())
    async with rt.unit_of_work() as s:
        rows = list((await s.exec(select(Rectification).where(
            Rectification.done_at.is_(None), Rectification.deadline < today,
            Rectification.overdue_flagged_at.is_(None)).order_by(Rectification.id)
            .with_for_update(skip_locked=True))).all())
        for rect in rows:
            rect.overdue_flagged_at = utcnow()
            s.add(rect)
            await rt.outbox.emit(s, OVERDUE_SUBJECT, ev.RectificationOverdue(
                rectification_id=rect.id, inspection_id=rect.inspection_id, account_id=rect.account_id,
                unit_id=rect.unit_id, deadline=rect.deadline.isoformat(), requirement=rect.requirement), rect.account_id)
            account = await s.get(Account, rect.account_id)
            await notify(s, "rectification.overdue", rect.id, rect.unit_id, f"账号“{account.name}”的整改已逾期",
                         f"整改期限为{rect.deadline.isoformat()}，至今未报告完成：{rect.requirement}",
                         unit_roles=("principal", "chief_editor"), region_roles=("regulator",),
                         account_id=rect.account_id)
    if rows:
        log.warning("%d rectifications are overdue", len(rows))
    return len(rows)


async def worker(rt: Runtime, stop: asyncio.Event) -> None:
    """Checks at start-up, then every `rectification_check_interval_s` (default an hour),
    and at once when an order is recorded with a deadline already past."""
    await periodically(lambda: report_overdue_rectifications(rt), rt.settings.rectification_check_interval_s, stop,
                       "overdue rectification check", wake=_wake(rt))


# --- measures -----------------------------------------------------------------------------

async def record_measure(rt: Runtime, who: Principal, inspection_id: str, data: MeasureIn) -> MeasurePublic:
    """A measure on a failed account of the round, with its document (e.g. the notice's number)."""
    who.require(*INSPECTOR)
    async with rt.unit_of_work() as s:
        await _inspection(s, inspection_id)
        entry = await _entry(s, inspection_id, data.account_id, who)
        _require_failed(entry)
        measure = InspectionMeasure(inspection_id=inspection_id, account_id=entry.account_id, unit_id=entry.unit_id,
                                    kind=data.kind, note=data.note, document_ref=data.document_ref,
                                    recorded_by=who.subject)
        s.add(measure)
        await s.flush()
        await rt.outbox.emit(s, MEASURE_SUBJECT, ev.InspectionMeasureRecorded(
            measure_id=measure.id, inspection_id=inspection_id, account_id=measure.account_id, unit_id=measure.unit_id,
            kind=measure.kind, document_ref=measure.document_ref or "", recorded_by=who.subject), measure.account_id)
        account = await s.get(Account, measure.account_id)
        await notify(s, "inspection.measure", measure.id, measure.unit_id,
                     f"账号“{account.name}”：{MEASURE_NAMES[measure.kind]}",
                     f"网管部门对检查不合格的账号“{account.name}”采取措施：{MEASURE_NAMES[measure.kind]}"
                     + (f"（{measure.document_ref}）" if measure.document_ref else "") + "。",
                     unit_roles=("principal", "chief_editor"), account_id=measure.account_id)
    return MeasurePublic.model_validate(measure, from_attributes=True)


# --- helpers ------------------------------------------------------------------------------

async def _rectification_event(rt: Runtime, s: AsyncSession, rect: Rectification, state: str, by: str) -> None:
    await rt.outbox.emit(s, RECTIFICATION_SUBJECT.format(state=state), ev.RectificationChanged(
        rectification_id=rect.id, inspection_id=rect.inspection_id, account_id=rect.account_id, unit_id=rect.unit_id,
        deadline=rect.deadline.isoformat(), requirement=rect.requirement, state=state, by=by), rect.account_id)


def _wake(rt: Runtime) -> asyncio.Event:
    return rt.state.setdefault(_WAKE, asyncio.Event())


async def _inspection(s: AsyncSession, inspection_id: str) -> Inspection:
    inspection = await s.get(Inspection, inspection_id)
    if inspection is None:
        raise AppError(404, "inspection_not_found", "未找到检查轮次", {"id": inspection_id})
    return inspection


async def _entry(s: AsyncSession, inspection_id: str, account_id: str, inspector: Principal,
                 for_update: bool = False) -> InspectionAccount:
    """An account of the round, for an inspector whose region subtree holds its unit."""
    stmt = select(InspectionAccount).where(InspectionAccount.inspection_id == inspection_id,
                                           InspectionAccount.account_id == account_id)
    entry = (await s.exec(stmt.with_for_update() if for_update else stmt)).first()
    if entry is None:
        raise invalid("account_not_in_round", "该账号不在本轮检查范围内", {"account_id": account_id})
    inspector.require_unit(entry.unit_id, await unit_path(s, entry.unit_id), cross_unit_roles=INSPECTOR)
    return entry


def _require_failed(entry: InspectionAccount) -> None:
    if entry.passed is not False:
        raise conflict("account_not_failed", "只能对检查不合格的账号下达整改或处理措施",
                       {"account_id": entry.account_id, "passed": entry.passed})


def _result_record(entry: InspectionAccount) -> dict:
    return {"passed": entry.passed, "veto": entry.veto, "notes": entry.notes, "recorded_by": entry.recorded_by,
            "recorded_at": as_utc(entry.recorded_at).isoformat()}


def _entry_public(entry: InspectionAccount, account: Account) -> EntryPublic:
    result = None
    if entry.passed is not None:
        result = ResultPublic(passed=entry.passed, veto=entry.veto, notes=entry.notes, recorded_by=entry.recorded_by,
                              recorded_at=as_utc(entry.recorded_at))
    return EntryPublic(account_id=entry.account_id, account_name=account.name, platform=account.platform,
                       unit_id=entry.unit_id, result=result,
                       previous=[ResultPublic(**p) for p in entry.previous or []])


def _rect_public(rect: Rectification) -> RectificationPublic:
    overdue = rect.done_at is None and rect.deadline < local_date(utcnow())
    return RectificationPublic(**rect.model_dump(), overdue=overdue)


def _summary(inspection: Inspection, passed: int, failed: int, total: int) -> InspectionSummary:
    checked = passed + failed
    return InspectionSummary(
        **inspection.model_dump(), accounts_total=total, checked=checked, passed=passed, failed=failed,
        pass_rate=round(passed / checked, 4) if checked else None)


async def _view(s: AsyncSession, who: Principal, inspection: Inspection) -> InspectionPublic:
    """The round as `who` may see it: the accounts of their region subtree for READERS, else
    their unit's accounts only."""
    entries = select(InspectionAccount, Account).join(Account, Account.id == InspectionAccount.account_id).where(
        InspectionAccount.inspection_id == inspection.id).order_by(InspectionAccount.account_id)
    rects = select(Rectification).where(Rectification.inspection_id == inspection.id).order_by(Rectification.id)
    measures = select(InspectionMeasure).where(InspectionMeasure.inspection_id == inspection.id).order_by(
        InspectionMeasure.id)
    reach = {table: reach_filter(who, table.unit_id, *READERS)
             for table in (InspectionAccount, Rectification, InspectionMeasure)}
    if reach[InspectionAccount] is not None:
        entries = entries.where(reach[InspectionAccount])
        rects = rects.where(reach[Rectification])
        measures = measures.where(reach[InspectionMeasure])
    rows = list((await s.exec(entries)).all())
    if not rows and reach[InspectionAccount] is not None:
        raise forbidden("other_unit", "本轮检查不涉及本单位或本辖区的账号")
    passed = sum(1 for e, _ in rows if e.passed is True)
    failed = sum(1 for e, _ in rows if e.passed is False)
    summary = _summary(inspection, passed, failed, len(rows))
    return InspectionPublic(
        **summary.model_dump(),
        accounts=[_entry_public(e, a) for e, a in rows],
        rectifications=[_rect_public(r) for r in (await s.exec(rects)).all()],
        measures=[MeasurePublic.model_validate(m, from_attributes=True) for m in (await s.exec(measures)).all()])


# --- REST transport -----------------------------------------------------------------------

router = APIRouter(tags=["inspections"])
Limit = Annotated[int, Query(ge=1, le=200)]


@router.post("/v1/inspections", status_code=201, response_model=InspectionPublic)
async def open_round(rt: RuntimeDep, who: CurrentPrincipal, body: InspectionCreate):
    """Open a check round over a region subtree: all its accounts, or a reproducible sample (regulator)."""
    return await open_inspection(rt, who, body)


@router.get("/v1/inspections", response_model=Page)
async def list_rounds(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                      region_id: str | None = None):
    items, nxt = await list_inspections(rt, who, limit, cursor, region_id)
    return Page(items=items, next_cursor=nxt)


@router.get("/v1/inspections/{inspection_id}", response_model=InspectionPublic)
async def get_round(rt: RuntimeDep, who: CurrentPrincipal, inspection_id: str):
    """The round with its accounts, results, pass rate, rectifications and measures."""
    return await get_inspection(rt, who, inspection_id)


@router.post("/v1/inspections/{inspection_id}/results", response_model=EntryPublic)
async def post_result(rt: RuntimeDep, who: CurrentPrincipal, inspection_id: str, body: ResultIn):
    """Record (or replace) pass or fail for an account of the round (regulator)."""
    return await record_result(rt, who, inspection_id, body)


@router.post("/v1/inspections/{inspection_id}/rectifications", status_code=201, response_model=RectificationPublic)
async def post_rectification(rt: RuntimeDep, who: CurrentPrincipal, inspection_id: str, body: RectificationIn):
    """Order a failed account rectified by a deadline (regulator)."""
    return await order_rectification(rt, who, inspection_id, body)


@router.post("/v1/rectifications/{rectification_id}/done", response_model=RectificationPublic)
async def post_rectification_done(rt: RuntimeDep, who: CurrentPrincipal, rectification_id: str,
                                  body: RectificationDoneIn):
    """The account's unit reports the rectification done."""
    return await rectification_done(rt, who, rectification_id, body)


@router.get("/v1/rectifications", response_model=Page)
async def get_rectifications(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                             overdue: bool = False, inspection_id: str | None = None,
                             account_id: str | None = None):
    items, nxt = await list_rectifications(rt, who, limit, cursor, overdue, inspection_id, account_id)
    return Page(items=items, next_cursor=nxt)


@router.post("/v1/inspections/{inspection_id}/measures", status_code=201, response_model=MeasurePublic)
async def post_measure(rt: RuntimeDep, who: CurrentPrincipal, inspection_id: str, body: MeasureIn):
    """Record a measure on a failed account: deletion order, interview, warning, notice, closure (regulator)."""
    return await record_measure(rt, who, inspection_id, body)

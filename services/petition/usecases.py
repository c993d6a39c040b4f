"""Petition use cases: one function each, called by REST and gRPC alike.

Who reaches a case:
- the intake desk: while nobody has accepted a case, the handlers of the province level (the
  provincial 12345 / 信访 desk); once accepted, the handlers of the unit that accepted it;
- the responsible unit: its handlers (and its principal, for an extension) once assigned;
- supervisors and ops: the cases whose unit (or desk) lies in their region subtree.
Contact data is shown unmasked only to the handlers of the desk or unit of one case.
"""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit import workdays
from govmedia_kit.auth import Principal
from govmedia_kit.db import as_utc, page, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, not_found
from govmedia_kit.public import mask_name, mask_phone, new_tracking_code, normalize_tracking_code
from govmedia_kit.runtime import Runtime

from . import policies, sla
from .domain import (
    ACTIONS, CITIZEN, DESK, RECHECK_WINDOW, RETURN_WINDOW, STAFF_ACTIONS, UNIT, CHANNEL_ZH,
    check_contact, citizen_status, local_iso, mask_id_number, matter_key, normalize_id_number, redacted,
)
from .models import (
    ActionIn, Petition, PetitionCreate, PetitionPublic, PetitionReceipt, PetitionStatus, SlaPublic,
    Supervision, Timer, TimelineEntry, calendar_book, directory,
)

log = logging.getLogger(__name__)

RECEIVED = "govmedia.petition.petition.received"
CHANGED = "govmedia.petition.petition."  # + the verb of the action
# What a citizen may name at the public intake; the other channels come through imports.
PUBLIC_CHANNELS = ("web", "app")
# Who works on petitions in the back office.
STAFF = ("handler", "supervisor", "ops", "principal")
REGION_STAFF = ("supervisor", "ops")
SYSTEM = "system"

_VERB = {"accept": "accepted", "decline": "declined", "assign": "assigned", "return": "returned",
         "start": "started", "wait": "waiting", "resume": "resumed", "extend": "extended", "answer": "answered",
         "close": "closed", "decide": "decided", "rate": "rated", "supplement": "resumed",
         "recheck": "recheck_requested", "feature": "featured"}
FEATURED = "govmedia.petition.answer.featured"
RECOMPUTED_ACTION = "sla_recomputed"  # timeline: a deadline counted again on a newer calendar


def vault(rt: Runtime):
    return rt.state["vault"]


def calendar() -> workdays.WorkCalendar:
    """The calendar this process counts with (as of the last `fresh_calendar`)."""
    return workdays.default_calendar()


async def fresh_calendar(s: AsyncSession) -> workdays.WorkCalendar:
    """The calendar with ops' newest notices from this service's database: before a clock is set."""
    return await calendar_book.refresh(s)


# --- the SLA clock of a case ----------------------------------------------------------

def clock(p: Petition, now: datetime | None = None, cal: workdays.WorkCalendar | None = None) -> sla.Deadline:
    return sla.compute(cal or calendar(), as_utc(p.sla_started_at), sla.Period(p.sla_days, p.sla_unit),
                       pauses=p.pauses(), extra_days=p.extension_days if p.sla_stage == "handling" else 0,
                       warn_share=p.sla_warn_share, now=now or utcnow())


def apply_clock(p: Petition, now: datetime, cal: workdays.WorkCalendar | None = None) -> None:
    cal = cal or calendar()
    d = clock(p, now, cal)
    p.sla_last_day, p.due_at, p.warn_at = d.last_day, d.due_at, d.warn_at
    # Provisional while any year the count runs over has no official source yet.
    p.sla_calendar = cal.basis(workdays.local_date(as_utc(p.sla_started_at)), d.last_day)
    p.sla_calendar_rev = cal.revision


def start_stage(p: Petition, policy, stage: str, now: datetime) -> None:
    period = policies.period_of(policy, stage)
    p.sla_stage, p.sla_unit, p.sla_days, p.sla_started_at = stage, period.unit, period.days, now
    p.sla_policy = policies.label(policy, stage)
    p.sla_pauses, p.sla_paused, p.sla_running, p.breached_at = "[]", False, True, None
    apply_clock(p, now)


def sla_view(p: Petition, now: datetime | None = None) -> SlaPublic:
    now = now or utcnow()
    due, warn = as_utc(p.due_at), as_utc(p.warn_at)
    if p.sla_paused and p.sla_running:
        d = clock(p, now)
        due, warn = d.due_at, d.warn_at
    running = p.sla_running
    return SlaPublic(policy=p.sla_policy, policy_version=p.sla_version, stage=p.sla_stage, due_at=local_iso(due),
                     warn_at=local_iso(warn), paused=p.sla_paused, running=running, calendar=p.sla_calendar,
                     overdue=bool(running and now >= due),
                     time_left_s=int((due - now).total_seconds()) if running else None)


def citizen_sla(p: Petition, now: datetime | None = None) -> SlaPublic:
    """The clock as the citizen sees it. A case linked to an earlier one shows the clock it was
    given at intake, running, like any case just received: linking is not told (domain.citizen_status)."""
    now = now or utcnow()
    view = sla_view(p, now)
    if p.status != "linked":
        return view
    due = as_utc(p.due_at)
    return view.model_copy(update={"running": True, "overdue": now >= due,
                                   "time_left_s": int((due - now).total_seconds())})


async def schedule(s: AsyncSession, p: Petition) -> None:
    """Replace the case's pending timers by those of its current clock: none while paused or
    stopped; a warning and a breach per stage, each only once (what fired stays fired)."""
    # Replaced timers are deleted, not flagged: the pending ones stay exactly what is to fire.
    # One conditional statement: a timer a replica's loop is firing right now (its row locked)
    # is waited for and then kept as fired, never deleted and made again to fire twice.
    await s.execute(delete(Timer).where(Timer.petition_id == p.id, Timer.fired_at.is_(None),
                                        Timer.kind.in_(("warning", "breach")))
                    .execution_options(synchronize_session=False))
    if not p.sla_running or p.sla_paused:
        return
    fired = set((await s.exec(select(Timer.kind).where(Timer.petition_id == p.id, Timer.stage == p.sla_stage,
                                                       Timer.fired_at.is_not(None)))).all())
    for kind, due in (("warning", p.warn_at), ("breach", p.due_at)):
        if kind not in fired:
            s.add(Timer(petition_id=p.id, kind=kind, stage=p.sla_stage, due_at=due))
    s.info["timers_changed"] = True


async def cancel_followups(s: AsyncSession, p: Petition, now: datetime) -> None:
    """The case is done (answered, declined …): pending timers go, supervision closes."""
    await s.execute(delete(Timer).where(Timer.petition_id == p.id, Timer.fired_at.is_(None))
                    .execution_options(synchronize_session=False))
    for sv in (await s.exec(select(Supervision).where(Supervision.petition_id == p.id,
                                                      Supervision.status == "open"))).all():
        sv.status, sv.closed_at = "closed", now
        s.add(sv)


# --- reach ------------------------------------------------------------------------------

def _desk_reach(who: Principal, p: Petition) -> bool:
    if p.desk_unit_id:
        return who.unit_id == p.desk_unit_id
    return bool(who.region_path) and who.reaches_region(p.region_path)


def handles(who: Principal, p: Petition) -> bool:
    """The caller works this case as a handler (desk or unit): sees the contact data."""
    return who.has("handler") and (bool(p.unit_id and who.unit_id == p.unit_id) or _desk_reach(who, p))


def can_see(who: Principal, p: Petition) -> bool:
    if who.has("handler", "principal") and (who.unit_id in (p.unit_id, p.desk_unit_id) or handles(who, p)):
        return True
    scope = who.scope(*REGION_STAFF)
    if scope is None:
        return False
    return scope == "" or any((path or "").startswith(scope) for path in (p.region_path, p.desk_region_path))


def reach_clause(who: Principal):
    """WHERE clause of what `who` sees in lists (None: everything)."""
    scope = who.scope(*REGION_STAFF)
    if scope == "":
        return None
    clauses = []
    if who.has("handler", "principal"):
        clauses += [Petition.unit_id == who.unit_id, Petition.desk_unit_id == who.unit_id]
        if who.has("handler") and who.region_path and who.reaches_region(None):
            clauses.append(Petition.desk_unit_id.is_(None))
    if scope:
        clauses += [Petition.region_path.startswith(scope, autoescape=True),
                    Petition.desk_region_path.startswith(scope, autoescape=True)]
    return or_(*clauses) if clauses else Petition.id.is_(None)


def allowed_actions(who: Principal, p: Petition) -> list[str]:
    out = []
    for name in STAFF_ACTIONS:
        a = ACTIONS[name]
        if p.status in a.states and who.has(*a.roles) and _on_side(who, p, a.side):
            out.append(name)
    return out


def _on_side(who: Principal, p: Petition, side: str) -> bool:
    if side == DESK:
        return _desk_reach(who, p)
    if side == UNIT:
        return bool(p.unit_id) and who.unit_id == p.unit_id
    return False


def check_action(who: Principal | None, p: Petition, name: str) -> None:
    """Role, then side of the case, then state: each refusal with its stable code."""
    a = ACTIONS.get(name)
    if a is None:
        raise not_found("action", name)
    if a.side != CITIZEN:
        who.require(*a.roles)
        if not _on_side(who, p, a.side):
            raise forbidden("not_case_handler", "该留言不由您所在单位办理" if a.side == UNIT else "该留言不由您所在的受理窗口处理")
    if p.status not in a.states:
        shown = citizen_status(p.status) if a.side == CITIZEN else p.status  # the citizen never sees `linked`
        raise AppError(409, "invalid_state", f"当前状态“{shown}”下不能执行“{a.zh}”",
                       {"action": name, "status": shown, "allowed_states": list(a.states)})


# --- public ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Origin:
    """Where a case comes from when it is not a citizen typing into the public intake: an
    import (hotline work order, comment) names its source's own id and who brought it in."""
    source_ref: str | None = None         # unique: the same work order or comment is one case
    account_id: str | None = None         # the account a comment was left on
    imported_by: str | None = None
    actor: str = "citizen"
    note: str | None = None               # the timeline's first line
    desk_unit_id: str | None = None       # the desk that takes the case in (None: the provincial desk)
    desk_region_path: str | None = None
    # When the source received the matter (the hotline took the call), aware; None: now. The
    # case counts as received then: its SLA clock, receipt date and statistics start there.
    received_at: datetime | None = None
    # With `received_note`, the timeline has the source's receipt (at `received_at`, by
    # `received_actor`) and then the import (now, by `actor`, with `note`); without, one line.
    received_note: str | None = None
    received_actor: str = SYSTEM


PUBLIC = Origin()


async def public_intake(rt: Runtime, data: PetitionCreate) -> Petition:
    """The public intake (REST and gRPC, no token): only what a citizen types there, on the web
    form or in the app. Hotline transfers and comments come through the authenticated imports,
    so nobody at the public door can pass for the hotline."""
    if data.channel not in PUBLIC_CHANNELS:
        raise invalid("channel_not_public", "公众渠道只能提交网站或客户端留言；热线转办和评论须经授权接口导入",
                      {"field": "channel", "allowed": list(PUBLIC_CHANNELS)})
    return await create_petition(rt, data)


async def create_petition(rt: Runtime, data: PetitionCreate, origin: Origin = PUBLIC) -> Petition:
    return (await create_or_find(rt, data, origin))[0]


async def create_or_find(rt: Runtime, data: PetitionCreate, origin: Origin = PUBLIC) -> tuple[Petition, bool]:
    """Seal the contact, link a duplicate, start the SLA clock, open the timeline. An import
    whose source id is known already answers with that case (and False: nothing created)."""
    name, phone = check_contact(data.category, data.contact.name if data.contact else None,
                                data.contact.phone if data.contact else None)
    id_number = normalize_id_number(data.contact.id_number) if data.contact and data.contact.id_number else None
    v = vault(rt)
    mine = (data.category, data.title, data.content, name, phone, id_number)
    if origin.source_ref and (found := await _by_source(rt, origin.source_ref)) is not None:
        return _same_source(v, found, mine), False
    key = v.blind(phone)
    mkey = matter_key(data.title)
    now = utcnow()
    # The source's clock may run a little ahead (the import checked by how much): never later than now.
    received_at = min(origin.received_at, now) if origin.received_at else now
    for attempt in range(3):
        try:
            async with rt.unit_of_work() as s:
                await fresh_calendar(s)
                policy = await policies.current(s, data.category)
                petition = Petition(
                    tracking_code=new_tracking_code(), category=data.category, channel=data.channel,
                    title=data.title, content=data.content,
                    contact_key=key, location=data.location or None, lat=data.lat, lon=data.lon,
                    service_code=data.service_code, matter_key=mkey, policy_id=policy.id,
                    sla_version=policy.version, sla_warn_share=policy.warn_share, created_at=received_at,
                    updated_at=now, source_ref=origin.source_ref, source_account_id=origin.account_id,
                    imported_by=origin.imported_by, desk_unit_id=origin.desk_unit_id,
                    desk_region_path=origin.desk_region_path, region_path=origin.desk_region_path,
                    # placeholders, set by start_stage
                    sla_policy="", sla_stage="", sla_unit="", sla_days=0, sla_started_at=received_at,
                    sla_last_day=received_at.date(), due_at=received_at, warn_at=received_at,
                )
                start_stage(petition, policy, policies.first_stage(policy), received_at)
                # Sealed bound to this row (crypto.py): a value copied into another case does not open.
                petition.contact_name_enc = v.seal("contact_name", name, petition.id)
                petition.contact_phone_enc = v.seal("contact_phone", phone, petition.id)
                petition.contact_id_enc = v.seal("contact_id", id_number, petition.id)
                original = await _find_duplicate(rt, s, petition, v.blinds(phone)) if key else None
                s.add(petition)
                await s.flush()
                if origin.received_note:
                    s.add(TimelineEntry(petition_id=petition.id, at=received_at, actor=origin.received_actor,
                                        action="received", note=origin.received_note))
                    s.add(TimelineEntry(petition_id=petition.id, at=now, actor=origin.actor, action="imported",
                                        note=origin.note or ""))
                else:
                    s.add(TimelineEntry(petition_id=petition.id, at=received_at, actor=origin.actor,
                                        action="received",
                                        note=origin.note or f"经{CHANNEL_ZH.get(data.channel, data.channel)}渠道提交"))
                if original is not None:
                    await _link(rt, s, petition, original, now)
                else:
                    await schedule(s, petition)
                    await rt.outbox.emit(s, RECEIVED, _received_event(petition), petition.id)
            break
        except IntegrityError:
            # The same import committed by a concurrent request a moment ago: that case is the answer.
            if origin.source_ref and (found := await _by_source(rt, origin.source_ref)) is not None:
                return _same_source(v, found, mine), False
            # 60 random bits: a tracking-code collision is next to impossible, but not a reason to fail.
            if attempt == 2:
                raise
    _wake_timers(rt)
    # Never the contact data, nor the text (which citizens fill with it).
    log.info("petition %s received: %s via %s, due %s%s", petition.id, petition.category, petition.channel,
             local_iso(petition.due_at), f", linked to {petition.duplicate_of}" if petition.duplicate_of else "")
    return petition, True


async def _by_source(rt: Runtime, source_ref: str) -> Petition | None:
    async with rt.db.session() as s:
        return (await s.exec(select(Petition).where(Petition.source_ref == source_ref))).first()


def _same_source(v, found: Petition, mine: tuple) -> Petition:
    """The case an import's source id made before, when this import says the same thing: the
    same category, title, content and contact. Otherwise `409 import_conflict`, nothing changed.
    The contact is compared as stored: the phone by its blind index, name and ID number opened
    in memory from their sealed form; nothing about it is kept, logged or told."""
    category, title, content, name, phone, id_number = mine
    same = (found.category == category and found.title == title and found.content == content
            and found.contact_key in v.blinds(phone)
            and v.open("contact_name", found.contact_name_enc, found.id) == name
            and v.open("contact_id", found.contact_id_enc, found.id) == id_number)
    if not same:
        log.info("import %s differs from petition %s: refused", found.source_ref, found.id)
        # The case's id in the message too: gRPC carries the code and the message, not the details.
        raise conflict("import_conflict",
                       f"该来源编号已导入为留言 {found.id}，但内容（类别、标题、正文或联系人）与此前不同；未作任何更改",
                       {"petition_id": found.id, "source_ref": found.source_ref})
    return found


async def _find_duplicate(rt: Runtime, s: AsyncSession, new: Petition, keys: list | None = None) -> Petition | None:
    """The same citizen (phone) about the same matter (category and a like title) within the
    window — or at any time when that matter was closed after 复核 (not taken again)."""
    since = as_utc(new.created_at) - timedelta(days=rt.settings.duplicate_window_days)
    rows = (await s.exec(select(Petition).where(
        # keys: the phone's blind index under every configured data key (during a rotation).
        Petition.contact_key.in_(keys or [new.contact_key]), Petition.category == new.category,
        Petition.duplicate_of.is_(None), Petition.status.not_in(("declined", "linked")),
        or_(Petition.created_at >= since, Petition.recheck_level >= 2)).order_by(Petition.id))).all()
    for old in rows:
        if old.matter_key == new.matter_key or \
                difflib.SequenceMatcher(None, old.matter_key, new.matter_key).ratio() >= 0.8:
            return old
    return None


async def _link(rt: Runtime, s: AsyncSession, new: Petition, original: Petition, now: datetime) -> None:
    final = original.recheck_level >= 2 and original.status in ("answered", "closed")
    new.status, new.duplicate_of, new.sla_running = "linked", original.id, False
    new.closed_at = now
    s.add(new)
    note = "同一事项已经复核终结，不再重复受理" if final else "同一来信人就同一事项再次反映，已并入原件办理"
    s.add(TimelineEntry(petition_id=new.id, at=now, actor=SYSTEM, action="linked", note=note))
    s.add(TimelineEntry(petition_id=original.id, at=now, actor=SYSTEM, action="repeated",
                        note=f"来信人再次反映（{new.id}），未重复计数", public=False))
    await rt.outbox.emit(s, CHANGED + "linked", _changed(new, "linked", SYSTEM, now), new.id)


async def _by_code(s: AsyncSession, tracking_code: str) -> Petition:
    code = normalize_tracking_code(tracking_code)
    petition = None
    if code:
        petition = (await s.exec(select(Petition).where(Petition.tracking_code == code))).first()
    if petition is None:
        raise AppError(404, "petition_not_found", "未找到该查询码对应的留言")
    return petition


async def track_petition(rt: Runtime, tracking_code: str) -> PetitionStatus:
    async with rt.db.session() as s:
        p = await _by_code(s, tracking_code)
        entries = (await s.exec(select(TimelineEntry).where(TimelineEntry.petition_id == p.id,
                                                            TimelineEntry.public.is_(True))
                                .order_by(TimelineEntry.id))).all()
    return tracked(p, entries)


def tracked(p: Petition, entries=()) -> PetitionStatus:
    now = utcnow()
    can = (p.status in ACTIONS["recheck"].states and p.recheck_level < 2 and p.answered_at is not None
           and sla.window_open(calendar(), as_utc(p.answered_at), RECHECK_WINDOW, now))
    return PetitionStatus(
        tracking_code=p.tracking_code, status=citizen_status(p.status), category=p.category,
        created_at=local_iso(p.created_at), sla=citizen_sla(p, now), answer=p.answer,
        decline_reason=p.decline_reason, redirect_to=p.redirect_to, extension_reason=p.extension_reason,
        rating=p.rating, can_recheck=can,
        timeline=[{"at": local_iso(e.at), "action": e.action,
                   # a moved deadline tells the citizen from what to what, and why
                   **({"note": e.note} if e.action == RECOMPUTED_ACTION else {})}
                  for e in entries if e.action != "linked"])


async def citizen_act(rt: Runtime, tracking_code: str, action: str, body: ActionIn) -> PetitionStatus:
    """What a citizen does by tracking code: rate the answer, supplement what was asked for
    (resumes the clock), ask for 复查 / 复核."""
    if ACTIONS.get(action) is None or ACTIONS[action].side != CITIZEN:
        raise not_found("action", action)
    async with rt.unit_of_work() as s:
        p = await _by_code(s, tracking_code)
        p = await _lock(s, p.id)
        await _apply(rt, s, None, p, action, body)
    _wake_timers(rt)
    return await track_petition(rt, tracking_code)


# --- back office ------------------------------------------------------------------------

async def list_petitions(rt: Runtime, who: Principal, limit: int, cursor: str | None = None,
                         status: str | None = None, category: str | None = None, unit_id: str | None = None,
                         overdue: bool | None = None, at_risk: bool | None = None,
                         region: str | None = None) -> tuple[list[Petition], str | None]:
    """Oldest first; with `overdue` / `at_risk`, the earliest deadline first (the supervisor's
    order, and what the (sla_running, due_at) index serves at a million open cases)."""
    who.require(*STAFF)
    by_due = bool(overdue or at_risk)
    stmt = select(Petition).limit(limit + 1)
    stmt = stmt.order_by(Petition.due_at, Petition.id) if by_due else stmt.order_by(Petition.id)
    reach = reach_clause(who)
    if reach is not None:
        stmt = stmt.where(reach)
    if cursor and by_due:
        due_raw, _, cid = cursor.partition("~")
        try:
            due = datetime.fromisoformat(due_raw)
        except ValueError:
            raise invalid("invalid_cursor", "分页游标无效", {"field": "cursor"}) from None
        # `due_at >= …` first, so the (sla_running, due_at) index gives the range start.
        stmt = stmt.where(Petition.due_at >= due, or_(Petition.due_at > due, Petition.id > cid))
    elif cursor:
        stmt = stmt.where(Petition.id > cursor)
    if status:
        stmt = stmt.where(Petition.status == status)
    if category:
        stmt = stmt.where(Petition.category == category)
    if unit_id:
        stmt = stmt.where(Petition.unit_id == unit_id)
    if region:
        stmt = stmt.where(Petition.region_path.contains(f"/{region}/", autoescape=True))
    now = utcnow()
    if overdue:
        stmt = stmt.where(Petition.sla_running.is_(True), Petition.due_at <= now, Petition.sla_paused.is_(False))
    if at_risk:
        stmt = stmt.where(Petition.sla_running.is_(True), Petition.due_at > now, Petition.warn_at <= now,
                          Petition.sla_paused.is_(False))
    key = (lambda p: f"{as_utc(p.due_at).isoformat()}~{p.id}") if by_due else (lambda p: p.id)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit, key)


async def _get_visible(s: AsyncSession, who: Principal, petition_id: str) -> Petition:
    who.require(*STAFF)
    p = await s.get(Petition, petition_id)
    if p is None:
        raise not_found("petition", petition_id)
    if not can_see(who, p):
        raise forbidden("other_unit", "无权访问其他单位的留言")
    return p


async def get_petition(rt: Runtime, who: Principal, petition_id: str) -> PetitionPublic:
    async with rt.db.session() as s:
        p = await _get_visible(s, who, petition_id)
        name = await directory.name(s, p.unit_id) if p.unit_id else None
    return public_view(rt, p, who, reveal=handles(who, p), unit_name=name)


def public_view(rt: Runtime, p: Petition, who: Principal | None, reveal: bool = False,
                unit_name: str | None = None) -> PetitionPublic:
    contact = None
    if p.contact_name_enc or p.contact_phone_enc:
        v = vault(rt)
        name = v.open("contact_name", p.contact_name_enc, p.id)
        phone = v.open("contact_phone", p.contact_phone_enc, p.id)
        id_number = v.open("contact_id", p.contact_id_enc, p.id)
        contact = {"name": name if reveal else mask_name(name), "phone": phone if reveal else mask_phone(phone)}
        if id_number:
            contact["id_number"] = id_number if reveal else mask_id_number(id_number)
    return PetitionPublic(
        id=p.id, category=p.category, title=p.title, content=p.content, channel=p.channel, contact=contact,
        location=p.location, status=p.status, unit_id=p.unit_id, unit_name=unit_name, desk_unit_id=p.desk_unit_id,
        answer=p.answer, answered_at=local_iso(p.answered_at), answered_on_time=p.answered_on_time,
        decline_reason=p.decline_reason, redirect_to=p.redirect_to, extension_days=p.extension_days,
        extension_reason=p.extension_reason, rating=p.rating, recheck_level=p.recheck_level,
        featured_at=local_iso(p.featured_at), duplicate_of=p.duplicate_of, source_ref=p.source_ref,
        source_account_id=p.source_account_id, actions=allowed_actions(who, p) if who else [], sla=sla_view(p),
        created_at=local_iso(p.created_at), updated_at=local_iso(p.updated_at))


def receipt(p: Petition) -> PetitionReceipt:
    """The citizen's receipt: the same for a case linked to an earlier one as for any other."""
    return PetitionReceipt(id=p.id, tracking_code=p.tracking_code, status=citizen_status(p.status),
                           category=p.category, created_at=local_iso(p.created_at), sla=citizen_sla(p))


async def petition_timeline(rt: Runtime, who: Principal, petition_id: str) -> list[TimelineEntry]:
    async with rt.db.session() as s:
        await _get_visible(s, who, petition_id)
        stmt = select(TimelineEntry).where(TimelineEntry.petition_id == petition_id).order_by(TimelineEntry.id)
        return list((await s.exec(stmt)).all())


async def act(rt: Runtime, who: Principal, petition_id: str, action: str, body: ActionIn) -> PetitionPublic:
    """One workflow action of staff (see domain.ACTIONS for the states and roles of each)."""
    if action not in STAFF_ACTIONS:
        raise not_found("action", action)
    async with rt.unit_of_work() as s:
        p = await _lock(s, petition_id)
        if p is None:
            raise not_found("petition", petition_id)
        who.require(*STAFF)
        if not can_see(who, p) and not _desk_reach(who, p):
            raise forbidden("other_unit", "无权访问其他单位的留言")
        await _apply(rt, s, who, p, action, body)
        name = await directory.name(s, p.unit_id) if p.unit_id else None
    _wake_timers(rt)
    log.info("petition %s: %s by %s → %s", p.id, action, who.subject, p.status)
    return public_view(rt, p, who, reveal=handles(who, p), unit_name=name)


async def _lock(s: AsyncSession, petition_id: str) -> Petition | None:
    # SQLite: the transaction holds the write lock already (BEGIN IMMEDIATE); PostgreSQL: the row.
    return (await s.exec(select(Petition).where(Petition.id == petition_id).with_for_update())).first()


def _need(value, field: str, message: str):
    if not value:
        raise invalid(f"{field}_required", message, {"field": field})
    return value


async def _apply(rt: Runtime, s: AsyncSession, who: Principal | None, p: Petition, action: str, body: ActionIn) -> None:
    check_action(who, p, action)
    now = utcnow()
    cal = await fresh_calendar(s)
    actor = who.subject if who else "citizen"
    note = body.note or ""
    public = True
    if action == "accept":
        p.status, p.accepted_at = "accepted", now
        p.desk_unit_id, p.desk_region_path = who.unit_id, who.region_path or None
        if p.region_path is None:
            p.region_path = p.desk_region_path
        if p.sla_stage == "acceptance":
            policy = await s.get(policies.SlaPolicy, p.policy_id)
            start_stage(p, policy, "handling", now)
    elif action == "decline":
        p.decline_reason = _need(body.reason, "reason", "不予受理须说明理由")
        p.redirect_to = _need(body.redirect_to, "redirect_to", "不予受理须告知应向何处反映")
        p.status, p.closed_at, p.sla_running = "declined", now, False
        p.desk_unit_id = p.desk_unit_id or who.unit_id
        p.desk_region_path = p.desk_region_path or who.region_path or None
        note = f"{p.decline_reason}；请向{p.redirect_to}反映"
        await cancel_followups(s, p, now)
    elif action == "assign":
        unit_id = _need(body.unit_id, "unit_id", "转办须指定承办单位")
        path = await directory.region_path(s, unit_id)
        if path is None:
            raise invalid("unknown_unit", "未找到承办单位", {"field": "unit_id"})
        p.unit_id, p.region_path, p.assigned_at, p.status = unit_id, path, now, "assigned"
        note = f"转办至{await directory.name(s, unit_id) or unit_id}" + (f"：{note}" if note else "")
    elif action == "return":
        reason = _need(body.reason, "reason", "退回须说明理由")
        if not sla.window_open(cal, as_utc(p.assigned_at), RETURN_WINDOW, now):
            raise conflict("return_window_closed", "转办之日起 5 个工作日内方可退回",
                           {"assigned_at": local_iso(p.assigned_at)})
        p.status, p.unit_id, p.region_path = "returned", None, p.desk_region_path
        note, public = f"承办单位退回：{reason}", False
    elif action == "start":
        p.status = "in_progress"
    elif action == "wait":
        _need(body.note, "note", "请写明需要来信人补充的材料")
        pauses = p.pauses()
        pauses.append(sla.Pause(now))
        p.set_pauses(pauses)
        p.status, p.sla_paused = "waiting", True
        apply_clock(p, now)
    elif action in ("resume", "supplement"):
        pauses = p.pauses()
        pauses[-1] = sla.Pause(pauses[-1].start, now)
        p.set_pauses(pauses)
        p.status, p.sla_paused = "in_progress", False
        apply_clock(p, now)
        if action == "supplement":
            note = f"来信人补充：{_need(body.note, 'note', '请填写补充的内容')}"
    elif action == "extend":
        if p.extension_days:
            raise conflict("extension_used", "每件留言只能延期一次")
        if p.sla_stage != "handling":
            raise conflict("extension_not_applicable", "仅办理时限可以延期", {"stage": p.sla_stage})
        policy = await s.get(policies.SlaPolicy, p.policy_id)
        days = _need(body.days, "days", "请填写延期天数")
        if days > policy.extension_max_days:
            raise invalid("extension_too_long", f"延期不得超过 {policy.extension_max_days} 天",
                          {"field": "days", "max": policy.extension_max_days})
        p.extension_reason = _need(body.reason, "reason", "延期须说明理由（将告知来信人）")
        p.extension_days = days
        apply_clock(p, now)
        note = f"经单位主要负责人批准延期 {days} {'个工作日' if p.sla_unit == sla.WORKDAYS else '日'}：{p.extension_reason}"
    elif action == "answer":
        p.answer = _need(body.answer, "answer", "请填写答复内容")
        p.status, p.answered_at, p.sla_running = "answered", now, False
        p.answered_on_time = now < as_utc(p.due_at)
        p.handling_workdays = sla.working_days_between(cal, as_utc(p.created_at), now)
        await cancel_followups(s, p, now)
    elif action == "close":
        p.status, p.closed_at = "closed", now
    elif action == "feature":
        # The answer goes to content as a draft, through the normal review before anything is
        # published; what leaves here carries no name, number or address of the citizen.
        if p.featured_at is not None:
            raise conflict("already_featured", "该答复已经精选，稿件已交采编")
        p.featured_at = now
        name = vault(rt).open("contact_name", p.contact_name_enc, p.id)
        names = (name,) if name else ()
        await rt.outbox.emit(s, FEATURED, ev.PetitionAnswerFeatured(
            petition_id=p.id, unit_id=p.unit_id or "", category=p.category, title=redacted(p.title, names),
            question=redacted(p.content, names), answer=redacted(p.answer or "", names), featured_by=who.subject,
            answered_at=local_iso(p.answered_at) or ""), p.id)
        note = "答复入选精选，已转采编按程序审核发布"
    elif action == "decide":
        _need(body.decision, "decision", "请选择维持或变更")
        p.answer = _need(body.answer, "answer", "请填写复查/复核意见")
        p.status, p.answered_at, p.sla_running, p.closed_at = "answered", now, False, None
        note = f"{'复查' if p.recheck_level == 1 else '复核'}：{'维持原处理意见' if body.decision == 'upheld' else '变更原处理意见'}"
        await cancel_followups(s, p, now)
    elif action == "rate":
        if p.rating is not None:
            raise conflict("already_rated", "已经评价过了")
        p.rating, p.rating_comment = _need(body.rating, "rating", "请给出 1–5 分的评价"), body.note
        if p.status == "answered":
            p.status, p.closed_at = "closed", now
        note = f"评价 {p.rating} 分"
    elif action == "recheck":
        if p.recheck_level >= 2:
            raise conflict("review_final", "该事项已经复核，不再受理复查或复核请求")
        if p.answered_at is None or not sla.window_open(cal, as_utc(p.answered_at), RECHECK_WINDOW, now):
            raise conflict("recheck_window_closed", "须在收到答复之日起 30 日内提出")
        _need(body.reason, "reason", "请说明申请复查或复核的理由")
        p.recheck_level += 1
        stage = "recheck" if p.recheck_level == 1 else "review"
        p.status, p.closed_at = ("rechecking" if stage == "recheck" else "reviewing"), None
        policy = await s.get(policies.SlaPolicy, p.policy_id)
        start_stage(p, policy, stage, now)
        note = ("申请复查：" if stage == "recheck" else "申请复核：") + body.reason
    p.updated_at = now
    s.add(p)
    s.add(TimelineEntry(petition_id=p.id, at=now, actor=actor, action=action, note=note, public=public))
    if p.sla_running:
        await schedule(s, p)
    await rt.outbox.emit(s, CHANGED + _VERB[action], _changed(p, action, actor, now), p.id)


def _wake_timers(rt: Runtime) -> None:
    wake = rt.state.get("timer_wake")
    if wake is not None:
        wake.set()


# --- events -------------------------------------------------------------------------

def _received_event(p: Petition) -> ev.PetitionReceived:
    # No contact data on the bus: consumers that need it ask this service.
    return ev.PetitionReceived(
        petition_id=p.id, category=p.category, channel=p.channel, title=redacted(p.title), due_at=local_iso(p.due_at),
        policy=p.sla_policy, stage=p.sla_stage, warn_at=local_iso(p.warn_at), received_at=local_iso(p.created_at),
    )


def _changed(p: Petition, action: str, actor: str, now: datetime) -> ev.PetitionChanged:
    return ev.PetitionChanged(
        petition_id=p.id, action=action, status=p.status, category=p.category, unit_id=p.unit_id or "",
        desk_unit_id=p.desk_unit_id or "", actor=actor, at=local_iso(now), stage=p.sla_stage,
        due_at=local_iso(p.due_at) if p.sla_running else "", duplicate_of=p.duplicate_of or "")


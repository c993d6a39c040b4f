"""Notices (提醒): what the watches tell people, in an inbox each person reads.

The dormancy ladder warns the account's editor-in-chief at 10 silent days and its principal
at 12; overdue filings and rectifications go to the unit's leaders and to the regulator of
the region. Each watch writes its notice in the same transaction as its event, so a notice
exists exactly when its event does.

A notice is addressed by role, not by person: to roles within the unit it is about (a
principal appointed next week still sees the warning) and to region roles whose subtree
holds that unit (a city's regulator sees the notices of its city). Read receipts are per
person.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from govmedia.events.v1 import events_pb2 as ev
from sqlalchemy import and_, exists, false, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import REGION_ROLES, CurrentPrincipal, Principal
from govmedia_kit.bus import Consumer, Event
from govmedia_kit.db import as_utc, page
from govmedia_kit.errors import AppError
from govmedia_kit.runtime import Runtime, RuntimeDep

from .models import Page
from .notices_models import Notice, NoticePublic, NoticeRead
from .regions import unit_path


# --- writing (by the watches, inside their transactions) --------------------------------------

async def notify(s: AsyncSession, kind: str, about_id: str, unit_id: str, title: str, body: str, *,
                 unit_roles: tuple[str, ...] = (), region_roles: tuple[str, ...] = (),
                 account_id: str | None = None) -> None:
    """Address a notice; the same (kind, about_id) again is ignored (the watches announce
    each thing once already; this keeps a replayed pass from telling anyone twice)."""
    if (await s.exec(select(Notice.id).where(Notice.kind == kind, Notice.about_id == about_id))).first():
        return
    s.add(Notice(kind=kind, about_id=about_id, account_id=account_id, unit_id=unit_id,
                    region_path=await unit_path(s, unit_id) or "", title=title, body=body,
                    unit_roles=_roles(unit_roles), region_roles=_roles(region_roles)))


def _roles(roles: tuple[str, ...]) -> str:
    return f"|{'|'.join(roles)}|" if roles else ""


# --- told by other services -------------------------------------------------------------------

async def on_review_level_overdue(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """An urgent item waited past a review level's deadline: its holders are reminded, then
    the next level up is told (the review service decides who and when; this is the inbox)."""
    msg = event.parse(ev.ReviewLevelOverdue)
    escalated = msg.stage == "escalated"
    roles = tuple(msg.next_roles if escalated else msg.holder_roles)
    if not roles or msg.stage not in ("reminder", "escalated"):
        return
    if escalated:
        title = f"突发稿件第{msg.level}级审核超时未处理：{msg.title}"
        body = f"突发稿件“{msg.title}”在第{msg.level}级审核超过时限（{msg.due_at}）仍未处理，请督促或接手。"
    else:
        title = f"突发稿件待您审核，已超时：{msg.title}"
        body = f"突发稿件“{msg.title}”在第{msg.level}级审核已超过时限（{msg.due_at}），请尽快审核。"
    await notify(s, f"review.{msg.stage}", f"{msg.review_id}:{msg.level}", msg.unit_id, title[:200], body[:2000],
                 unit_roles=roles)


PETITION_SLA_TEXT = {  # kind → (title, body); the petition service decides who and when
    "warning": ("留言办理时限即将届满", "留言“{title}”将于 {due_at} 到期，请抓紧办理。"),
    "breached": ("留言已超过办理时限，已转入督办", "留言“{title}”已于 {due_at} 超过办理时限，已列入督办。"),
    "reminder": ("督办催办：留言仍未办结", "留言“{title}”超过办理时限（{due_at}）仍未办结，请立即办理并反馈。"),
    "public_notice": ("督办通报：留言超期未办结", "留言“{title}”超过办理时限（{due_at}）后催办仍未办结，已列入通报。"),
    "supervision_due": ("督办期限已到", "留言“{title}”的督办期限已到，请反馈办理情况。"),
}


async def on_petition_sla(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """A citizen's case nears or passes its deadline: its unit's handlers and leaders and the
    region's supervisors are told, as the alert names them."""
    msg = event.parse(ev.PetitionSlaAlert)
    text = PETITION_SLA_TEXT.get(msg.kind)
    if text is None or not msg.unit_id:
        return
    roles = tuple(msg.notify_roles)
    title, body = (t.format(title=msg.title, due_at=msg.due_at) for t in text)
    await notify(s, f"petition.{msg.kind}", f"{msg.petition_id}:{msg.stage}:{msg.supervision_id or msg.due_at}",
                 msg.unit_id, f"{title}：{msg.title}"[:200], body[:2000],
                 unit_roles=tuple(r for r in roles if r not in REGION_ROLES),
                 region_roles=tuple(r for r in roles if r in REGION_ROLES))


CONSUMERS = [Consumer("account-review-overdue", "govmedia.review.level.overdue", on_review_level_overdue),
             Consumer("account-petition-sla", "govmedia.petition.sla.>", on_petition_sla)]


# --- reading ----------------------------------------------------------------------------------

def _addressed_to(who: Principal):
    """Notices for this person: a role of theirs in the notice's unit, or a region role of
    theirs whose subtree holds the notice's unit."""
    clauses = []
    if who.roles:
        clauses.append(and_(Notice.unit_id == who.unit_id,
                            or_(*[Notice.unit_roles.contains(f"|{r}|") for r in who.roles])))
    if who.region_path:
        for role in (r for r in who.roles if r in REGION_ROLES):
            clauses.append(and_(Notice.region_roles.contains(f"|{role}|"),
                                Notice.region_path.startswith(who.region_path, autoescape=True)))
    return or_(*clauses) if clauses else false()


def _read_by(who: Principal):
    return exists().where(NoticeRead.notice_id == Notice.id, NoticeRead.user_id == who.subject)


async def list_notices(rt: Runtime, who: Principal, limit: int, cursor: str | None,
                       unread: bool = False) -> tuple[list[NoticePublic], str | None]:
    """The caller's notices, newest first."""
    stmt = (select(Notice, _read_by(who).label("read")).where(_addressed_to(who))
            .order_by(Notice.id.desc()).limit(limit + 1))
    if cursor:
        stmt = stmt.where(Notice.id < cursor)
    if unread:
        stmt = stmt.where(~_read_by(who))
    async with rt.db.session() as s:
        rows, nxt = page(list((await s.exec(stmt)).all()), limit, key=lambda r: r[0].id)
    return [_public(n, bool(read)) for n, read in rows], nxt


async def mark_read(rt: Runtime, who: Principal, notice_id: str) -> NoticePublic:
    """Idempotent. A notice not addressed to the caller is answered as unknown."""
    async with rt.unit_of_work() as s:
        notice = (await s.exec(select(Notice).where(Notice.id == notice_id, _addressed_to(who)))).first()
        if notice is None:
            raise AppError(404, "notice_not_found", "未找到该提醒", {"id": notice_id})
        if await s.get(NoticeRead, (notice_id, who.subject)) is None:
            s.add(NoticeRead(notice_id=notice_id, user_id=who.subject))
    return _public(notice, True)


def _public(n: Notice, read: bool) -> NoticePublic:
    return NoticePublic(id=n.id, kind=n.kind, about_id=n.about_id, account_id=n.account_id, unit_id=n.unit_id,
                        title=n.title, body=n.body, created_at=as_utc(n.created_at), read=read)


# --- REST ------------------------------------------------------------------------------------

router = APIRouter(tags=["notices"])
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/v1/notices", response_model=Page)
async def get_notices(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                      unread: bool = False):
    """My notices, newest first: dormancy warnings, overdue filings and rectifications, orders."""
    items, nxt = await list_notices(rt, who, limit, cursor, unread)
    return Page(items=items, next_cursor=nxt)


@router.post("/v1/notices/{notice_id}/read", response_model=NoticePublic)
async def post_read(rt: RuntimeDep, who: CurrentPrincipal, notice_id: str):
    return await mark_read(rt, who, notice_id)

"""Delegation while a reviewer is away (授权代审), and the users read model it relies on.

A person lends a role they hold (section_head, deputy, principal, chief_editor, editor) to
a colleague of the same unit for a time window; the unit's principal may do it on an absent
person's behalf. Inside the window the delegate may decide (and, for a last-level role,
override findings) as if they held the role; separation of duties still applies to both of
them: neither the delegate nor the delegator may be the author, and neither may take part in
two levels of one item. The decision records the delegate, the delegator and the delegation.

The users read model (`users`, fed by govmedia.account.user.upserted) tells which unit a
person belongs to and whether they are active, so a delegation to anyone else is refused.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.bus import Consumer, Event
from govmedia_kit.db import as_utc, page, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid
from govmedia_kit.runtime import Runtime

from .models import Delegation, DelegationIn, DelegationPublic, KnownUser, directory, trail

USER_UPSERTED = "govmedia.account.user.upserted"
MAX_WINDOW = timedelta(days=90)


# --- the users read model ------------------------------------------------------------------

async def on_user_upserted(rt: Runtime, s: AsyncSession, event: Event) -> None:
    msg = event.parse(ev.UserUpserted)
    user = await s.get(KnownUser, msg.user_id)
    if user is None:
        user = KnownUser(user_id=msg.user_id, unit_id=msg.unit_id)
        s.add(user)
    user.unit_id, user.username, user.display_name = msg.unit_id, msg.username, msg.display_name
    user.roles, user.active, user.updated_at = list(msg.roles), msg.active, utcnow()
    await _end_delegations_of(s, user)


async def _end_delegations_of(s: AsyncSession, user: KnownUser) -> None:
    """Delegations follow the account service's users (issue 16): a deactivated person neither
    lends nor holds a delegated role any more, and a role taken from a delegator is no longer
    lent. Revoked by `account`, recorded in the delegation's audit stream."""
    now = utcnow()
    rows = await s.exec(select(Delegation).where(
        Delegation.revoked_at.is_(None), Delegation.ends_at > now,
        or_(Delegation.delegator_id == user.user_id, Delegation.to_user_id == user.user_id)))
    for d in rows.all():
        if user.active and not (d.delegator_id == user.user_id and d.role not in user.roles):
            continue
        before = DelegationPublic.of(d, now).model_dump()
        d.revoked_at, d.revoked_by = now, "account"
        s.add(d)
        await trail.append(s, f"delegation:{d.id}", "delegation_revoked", "account", before,
                           DelegationPublic.of(d, now).model_dump(), at=now)


CONSUMER = Consumer("review-user-upserted", USER_UPSERTED, on_user_upserted)


# --- acting by delegation --------------------------------------------------------------------

async def active_for(s: AsyncSession, who: Principal, unit_id: str, roles, now: datetime | None = None,
                     ) -> list[Delegation]:
    """The delegations to `who` in `unit_id` for any of `roles`, in force now, oldest first."""
    now = now or utcnow()
    rows = await s.exec(select(Delegation).where(
        Delegation.unit_id == unit_id, Delegation.to_user_id == who.subject, Delegation.role.in_(list(roles)),
        Delegation.revoked_at.is_(None), Delegation.starts_at <= now, Delegation.ends_at > now,
    ).order_by(Delegation.id))
    return list(rows.all())


async def delegated_roles(s: AsyncSession, who: Principal, now: datetime | None = None) -> set[str]:
    """The roles lent to `who` in their own unit right now."""
    now = now or utcnow()
    rows = await s.exec(select(Delegation.role).where(
        Delegation.unit_id == who.unit_id, Delegation.to_user_id == who.subject, Delegation.revoked_at.is_(None),
        Delegation.starts_at <= now, Delegation.ends_at > now))
    return set(rows.all())


# --- use cases -------------------------------------------------------------------------------

async def create_delegation(rt: Runtime, who: Principal, data: DelegationIn) -> DelegationPublic:
    now = utcnow()
    starts, ends = data.starts_at, data.ends_at
    if ends <= starts:
        raise invalid("invalid_window", "授权结束时间须晚于开始时间",
                      {"starts_at": starts.isoformat(), "ends_at": ends.isoformat()})
    if ends <= now:
        raise invalid("invalid_window", "授权结束时间已过", {"ends_at": ends.isoformat()})
    if ends - starts > MAX_WINDOW:
        raise invalid("window_too_long", f"授权期限最长 {MAX_WINDOW.days} 天", {"max_days": MAX_WINDOW.days})
    on_behalf = data.from_user_id is not None and data.from_user_id != who.subject
    async with rt.unit_of_work() as s:
        if on_behalf:
            if not who.has("principal"):
                raise forbidden("role_required", "只有本单位主要负责人可以代他人授权")
            delegator = await s.get(KnownUser, data.from_user_id)
            if delegator is None or delegator.unit_id != who.unit_id:
                raise invalid("delegator_not_in_unit", "授权人须为本单位人员", {"from_user_id": data.from_user_id})
            if data.role not in (delegator.roles or []):
                raise invalid("role_not_held", "授权人并不担任该角色",
                              {"from_user_id": data.from_user_id, "role": data.role})
            delegator_id = delegator.user_id
        else:
            if not who.has(data.role):
                raise forbidden("role_not_held", "只能授权本人担任的角色")
            delegator_id = who.subject
        if data.to_user_id == delegator_id:
            raise invalid("delegate_is_delegator", "不能授权给本人", {"to_user_id": data.to_user_id})
        delegate = await s.get(KnownUser, data.to_user_id)
        if delegate is None or delegate.unit_id != who.unit_id or not delegate.active:
            raise invalid("delegate_not_in_unit", "被授权人须为本单位在职人员", {"to_user_id": data.to_user_id})
        delegation = Delegation(unit_id=who.unit_id, delegator_id=delegator_id, to_user_id=delegate.user_id,
                                role=data.role, starts_at=starts, ends_at=ends, reason=data.reason,
                                created_by=who.subject, created_at=now)
        s.add(delegation)
        await s.flush()
        public = DelegationPublic.of(delegation, now)
        await trail.append(s, f"delegation:{delegation.id}", "delegation_created", who.subject, None,
                           public.model_dump(), at=now)
    return public


async def list_delegations(rt: Runtime, who: Principal, limit: int, cursor: str | None, active: bool | None = None,
                           to_user_id: str | None = None, from_user_id: str | None = None,
                           ) -> tuple[list[DelegationPublic], str | None]:
    """The delegations of the caller's unit (ops: of the units they reach), oldest first."""
    now = utcnow()
    stmt = select(Delegation).order_by(Delegation.id).limit(limit + 1)
    reach = directory.reach_filter(Delegation.unit_id, who, "ops")
    if reach is not None:
        stmt = stmt.where(reach)
    if cursor:
        stmt = stmt.where(Delegation.id > cursor)
    if to_user_id:
        stmt = stmt.where(Delegation.to_user_id == to_user_id)
    if from_user_id:
        stmt = stmt.where(Delegation.delegator_id == from_user_id)
    in_force = (Delegation.revoked_at.is_(None)) & (Delegation.starts_at <= now) & (Delegation.ends_at > now)
    if active is True:
        stmt = stmt.where(in_force)
    elif active is False:
        stmt = stmt.where(or_(Delegation.revoked_at.is_not(None), Delegation.starts_at > now,
                              Delegation.ends_at <= now))
    async with rt.db.session() as s:
        rows, nxt = page(list((await s.exec(stmt)).all()), limit)
    return [DelegationPublic.of(d, now) for d in rows], nxt


async def revoke_delegation(rt: Runtime, who: Principal, delegation_id: str) -> DelegationPublic:
    """By the delegator, whoever created it, or the unit's principal; kept, marked revoked."""
    now = utcnow()
    async with rt.unit_of_work() as s:
        d = (await s.exec(select(Delegation).where(Delegation.id == delegation_id).with_for_update())).first()
        if d is None:
            raise AppError(404, "delegation_not_found", "未找到该授权", {"id": delegation_id})
        await directory.require_reach(s, who, d.unit_id, "ops")
        allowed = who.subject in (d.delegator_id, d.created_by) or (who.unit_id == d.unit_id and who.has("principal"))
        if not allowed:
            raise forbidden("not_delegator", "只有授权人、代为授权的主要负责人可以撤销授权")
        if d.revoked_at is not None:
            raise conflict("delegation_revoked", "该授权已撤销", {"revoked_at": as_utc(d.revoked_at).isoformat()})
        before = DelegationPublic.of(d, now).model_dump()
        d.revoked_at, d.revoked_by = now, who.subject
        s.add(d)
        public = DelegationPublic.of(d, now)
        await trail.append(s, f"delegation:{d.id}", "delegation_revoked", who.subject, before, public.model_dump(),
                           at=now)
    return public

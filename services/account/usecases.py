"""Organisation use cases (regions, units, users, listing): one function each, for REST and gRPC.

User administration (issue 16). Ops manage the users of the units they reach; a unit's
principal manages their own unit's users, and only those who hold nothing but the unit's
working roles (`UNIT_GRANTABLE`), granting only those: never ops, regulator, supervisor
nor principal. Nobody deactivates, re-roles or resets themselves (so at least the acting
ops account always remains). Every change is a hash-chained audit entry of the user's stream
(`models.trail`: who, when, before, after; never a password or its hash) in the same
transaction as the change and its `user.upserted` event (which the review service's users
read model applies). Deactivation, a role change and a password reset each write a
revocation (subject, not-before) in that transaction: every service refuses the user's
older tokens within JWKS_REFRESH_S (govmedia_kit/auth.py), this replica at once.
Deactivation and a password reset also end the user's refresh sessions; after a role change
the refresh token keeps working and gives a token with the new roles."""
from __future__ import annotations

import logging

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.audit import AuditEntryPublic, AuditVerifyPublic
from govmedia_kit.auth import Principal
from govmedia_kit.db import page
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from .models import (
    PasswordResetIn, Region, RegionCreate, Unit, UnitCreate, User, UserCreate, UserDeactivate, UserReactivate,
    UserRolesIn, trail,
)
from .regions import path_of, reach_filter, unit_path
from .signin import hash_password, revoke_user_sessions
from .tokens import passwords, revoke_subject

log = logging.getLogger(__name__)

# Who may shape the organisation (each within their region subtree).
ORG_ADMINS = ("ops", "regulator")
USER_ADMINS = ("ops",)
# Who manages existing users: ops within reach, a unit's principal within the unit.
USER_MANAGERS = ("ops", "principal")
# What a principal may grant (and the only roles a user they manage may hold).
UNIT_GRANTABLE = ("deputy", "chief_editor", "section_head", "editor", "handler")


# --- organisation --------------------------------------------------------------

async def create_region(rt: Runtime, who: Principal, data: RegionCreate) -> Region:
    """A region below one the caller reaches; the province itself once, by ops."""
    who.require(*ORG_ADMINS)
    async with rt.unit_of_work() as s:
        parent = await s.get(Region, data.parent_id) if data.parent_id else None
        if data.parent_id and parent is None:
            raise invalid("parent_region_not_found", "上级区域不存在", {"parent_id": data.parent_id})
        if parent is None:
            if data.level != "province":
                raise invalid("parent_required", "非省级区域必须指定上级区域")
            who.require("ops")
            # One platform, one province: every reach is a subtree of it.
            if (await s.exec(select(Region.id).where(Region.parent_id.is_(None)).limit(1))).first():
                raise conflict("province_exists", "平台已有省级区域，只能在其下建立区域")
        else:
            who.require_region(parent.path, cross_unit_roles=ORG_ADMINS)
        region = Region.new(data.name, data.level, parent)
        s.add(region)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.region.upserted", _region_event(region), region.id)
    return region


async def create_unit(rt: Runtime, who: Principal, data: UnitCreate) -> Unit:
    who.require(*ORG_ADMINS)
    async with rt.unit_of_work() as s:
        who.require_region(await path_of(s, data.region_id), cross_unit_roles=ORG_ADMINS)
        if data.parent_id and not await s.get(Unit, data.parent_id):
            raise invalid("parent_unit_not_found", "上级单位不存在", {"parent_id": data.parent_id})
        unit = Unit(name=data.name, region_id=data.region_id, parent_id=data.parent_id, kind=data.kind,
                    short_names=data.short_names)
        s.add(unit)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.unit.upserted", _unit_event(unit, await path_of(s, unit.region_id)),
                             unit.id)
    return unit


async def create_user(rt: Runtime, who: Principal, data: UserCreate) -> User:
    who.require(*USER_ADMINS)
    password_hash = await hash_password(rt, data.password)
    async with rt.unit_of_work() as s:
        path = await unit_path(s, data.unit_id)
        if path is None:
            raise invalid("unit_not_found", "所属单位不存在", {"unit_id": data.unit_id})
        who.require_unit(data.unit_id, path, cross_unit_roles=USER_ADMINS)
        if (await s.exec(select(User).where(User.username == data.username))).first():
            raise conflict("username_taken", "用户名已被占用", {"username": data.username})
        user = User(username=data.username, display_name=data.display_name, unit_id=data.unit_id,
                    roles=data.roles, password_hash=password_hash)
        s.add(user)
        await s.flush()
        await trail.append(s, user.id, "created", who.subject, None, _user_state(user))
        await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    return user


# --- user administration -----------------------------------------------------------

async def _user_in_reach(s: AsyncSession, who: Principal, user_id: str, *, lock: bool = False) -> tuple[User, str]:
    stmt = select(User).where(User.id == user_id)
    user = (await s.exec(stmt.with_for_update() if lock else stmt)).first()
    if user is None:
        raise not_found("user", user_id)
    return user, await unit_path(s, user.unit_id) or ""


def _require_manager(who: Principal, user: User, path: str, new_roles: list[str] | None = None) -> None:
    """Ops reaching the user's unit; or the unit's own principal for a user holding only
    unit roles, granting only unit roles. Never on oneself."""
    who.require(*USER_MANAGERS)
    if not (who.has("ops") and _reaches(who, user.unit_id, path)):
        if not who.has("principal"):
            who.require_unit(user.unit_id, path, cross_unit_roles=("ops",))  # other_unit
        who.require_unit(user.unit_id, path, cross_unit_roles=())  # a principal: own unit only
        beyond = sorted({r for r in [*user.roles, *(new_roles or [])] if r not in UNIT_GRANTABLE})
        if beyond:
            raise AppError(403, "role_not_grantable", "单位负责人只能管理、授予本单位的业务角色",
                           {"roles": beyond, "grantable": list(UNIT_GRANTABLE)})
    if user.id == who.subject:
        raise forbidden("own_user", "不能停用、变更角色或重置本人账号，请由其他管理员办理")


def _reaches(who: Principal, unit_id: str, path: str) -> bool:
    try:
        who.require_unit(unit_id, path, cross_unit_roles=("ops",))
        return True
    except AppError:
        return False


async def _user_changed(rt: Runtime, s: AsyncSession, who: Principal, user: User, action: str, before: dict,
                        after: dict, revoke: str | None = None, end_sessions: str | None = None) -> int | None:
    """Audit, event, and (when the change makes tokens stale) revocation, in one transaction."""
    s.add(user)
    await s.flush()
    nbf = await revoke_subject(s, user.id, revoke) if revoke else None
    if end_sessions:
        await revoke_user_sessions(s, user.id, end_sessions)
    await trail.append(s, user.id, action, who.subject, before, after)
    await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    return nbf


def _revoked_here(rt: Runtime, user_id: str, nbf: int | None) -> None:
    """This replica refuses the old tokens at once (the others at their next refresh)."""
    if nbf is not None and hasattr(rt.verifier, "revoke"):
        rt.verifier.revoke(user_id, nbf)


async def get_user(rt: Runtime, who: Principal, user_id: str) -> User:
    """As the list: people see their own unit's users; ops and the regulator their subtree's."""
    async with rt.db.session() as s:
        user, path = await _user_in_reach(s, who, user_id)
    who.require_unit(user.unit_id, path, cross_unit_roles=ORG_ADMINS)
    return user


async def deactivate_user(rt: Runtime, who: Principal, user_id: str, data: UserDeactivate) -> User:
    """The user can no longer sign in; their tokens and refresh sessions end. Deactivating an
    inactive user changes nothing."""
    nbf = None
    async with rt.unit_of_work() as s:
        user, path = await _user_in_reach(s, who, user_id, lock=True)
        _require_manager(who, user, path)
        if user.active:
            before = _user_state(user)
            user.active = False
            nbf = await _user_changed(rt, s, who, user, "deactivated", before, {**_user_state(user),
                                      "reason": data.reason}, revoke="deactivated", end_sessions="user_inactive")
    _revoked_here(rt, user_id, nbf)
    if nbf is not None:
        log.info("user %s deactivated by %s", user_id, who.subject)
    return user


async def reactivate_user(rt: Runtime, who: Principal, user_id: str, data: UserReactivate) -> User:
    """The user may sign in again (with their password; old tokens stay refused)."""
    async with rt.unit_of_work() as s:
        user, path = await _user_in_reach(s, who, user_id, lock=True)
        _require_manager(who, user, path)
        if not user.active:
            before = _user_state(user)
            user.active = True
            await _user_changed(rt, s, who, user, "reactivated", before, {**_user_state(user), "reason": data.reason})
    return user


async def set_user_roles(rt: Runtime, who: Principal, user_id: str, data: UserRolesIn) -> User:
    """The user's roles become `data.roles`; tokens carrying the old ones are refused."""
    roles = sorted(set(data.roles))
    nbf = None
    async with rt.unit_of_work() as s:
        user, path = await _user_in_reach(s, who, user_id, lock=True)
        _require_manager(who, user, path, roles)
        if sorted(user.roles) != roles:
            before = _user_state(user)
            user.roles = roles
            nbf = await _user_changed(rt, s, who, user, "roles_changed", before,
                                      {**_user_state(user), "reason": data.reason}, revoke="roles_changed")
    _revoked_here(rt, user_id, nbf)
    return user


async def reset_password(rt: Runtime, who: Principal, user_id: str, data: PasswordResetIn) -> User:
    """A new password set by the manager; the user's tokens and refresh sessions end."""
    async with rt.db.session() as s:  # refuse before a quarter-second of hashing
        user, path = await _user_in_reach(s, who, user_id)
    _require_manager(who, user, path)
    password_hash = await hash_password(rt, data.password)
    async with rt.unit_of_work() as s:
        user, path = await _user_in_reach(s, who, user_id, lock=True)
        _require_manager(who, user, path)
        user.password_hash = password_hash
        state = _user_state(user)
        nbf = await _user_changed(rt, s, who, user, "password_reset", state,
                                  {**state, "password": "reset", "reason": data.reason},
                                  revoke="password_reset", end_sessions="password_reset")
    _revoked_here(rt, user_id, nbf)
    log.info("password of user %s reset by %s", user_id, who.subject)
    return user


async def _require_audit_reader(rt: Runtime, who: Principal, user_id: str) -> None:
    """Who may manage the user may read their history (ops by reach; the unit's principal)."""
    who.require(*USER_MANAGERS)
    async with rt.db.session() as s:
        user, path = await _user_in_reach(s, who, user_id)
    if not (who.has("ops") and _reaches(who, user.unit_id, path)):
        who.require_unit(user.unit_id, path, cross_unit_roles=())


async def user_audit(rt: Runtime, who: Principal, user_id: str, limit: int,
                     cursor: int | None) -> tuple[list[AuditEntryPublic], int | None]:
    """Every change to the user, in order; `cursor` is a sequence number."""
    await _require_audit_reader(rt, who, user_id)
    async with rt.db.session() as s:
        rows = await trail.entries(s, user_id, after_seq=cursor or 0, limit=limit + 1)
    nxt = rows[limit - 1]["seq"] if len(rows) > limit else None
    return [AuditEntryPublic.of(e) for e in rows[:limit]], nxt


async def user_audit_verify(rt: Runtime, who: Principal, user_id: str) -> AuditVerifyPublic:
    await _require_audit_reader(rt, who, user_id)
    async with rt.db.session() as s:
        return AuditVerifyPublic(stream_id=user_id, **await trail.verify(s, user_id))


async def list_of(rt: Runtime, who: Principal, model, limit: int, cursor: str | None, **filters) -> tuple[list, str | None]:
    """A page of regions or units (the organisation is no secret), ordered by id, with
    exact-match filters."""
    return await _page(rt, select(model), model, limit, cursor, **filters)


async def list_users(rt: Runtime, who: Principal, limit: int, cursor: str | None,
                     unit_id: str | None = None) -> tuple[list[User], str | None]:
    """People see their own unit's users; ops and the regulator those of their subtree."""
    stmt = select(User)
    reach = reach_filter(who, User.unit_id, *ORG_ADMINS)
    if reach is not None:
        stmt = stmt.where(reach)
    return await _page(rt, stmt, User, limit, cursor, unit_id=unit_id)


async def _page(rt: Runtime, stmt, model, limit: int, cursor: str | None, **filters) -> tuple[list, str | None]:
    stmt = stmt.order_by(model.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(model.id > cursor)
    for name, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, name) == value)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


# --- events --------------------------------------------------------------------

def _region_event(r: Region) -> ev.RegionUpserted:
    return ev.RegionUpserted(region_id=r.id, name=r.name, parent_id=r.parent_id or "", level=r.level, path=r.path)


def _unit_event(u: Unit, region_path: str) -> ev.UnitUpserted:
    return ev.UnitUpserted(unit_id=u.id, name=u.name, region_id=u.region_id, parent_id=u.parent_id or "", kind=u.kind,
                           region_path=region_path)


def _user_state(u: User) -> dict:
    """What the audit trail records of a user (never the password hash)."""
    return {"username": u.username, "unit_id": u.unit_id, "roles": sorted(u.roles), "active": u.active}


def _user_event(u: User) -> ev.UserUpserted:
    return ev.UserUpserted(user_id=u.id, username=u.username, display_name=u.display_name, unit_id=u.unit_id,
                           roles=u.roles, active=u.active)


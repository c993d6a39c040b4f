"""Organisation use cases (regions, units, users, listing): one function each, for REST and gRPC."""
from __future__ import annotations

import asyncio

from sqlmodel import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import page
from govmedia_kit.errors import conflict, invalid
from govmedia_kit.runtime import Runtime

from .models import (
    Region, RegionCreate, Unit, UnitCreate, User, UserCreate,
)
from .regions import path_of, reach_filter, unit_path
from .tokens import passwords

# Who may shape the organisation (each within their region subtree).
ORG_ADMINS = ("ops", "regulator")
USER_ADMINS = ("ops",)


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
    # Hashed off the event loop and outside the transaction: a quarter-second of CPU.
    password_hash = await asyncio.to_thread(passwords(rt).hash, data.password)
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
        await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    return user


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


def _user_event(u: User) -> ev.UserUpserted:
    return ev.UserUpserted(user_id=u.id, username=u.username, display_name=u.display_name, unit_id=u.unit_id,
                           roles=u.roles, active=u.active)


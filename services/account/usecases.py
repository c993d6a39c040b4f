"""Account use cases: one function each, called by REST and gRPC alike."""
from __future__ import annotations

import secrets

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import page
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from .models import (
    Account, AccountCreate, AccountPublic, Region, RegionCreate, Unit, UnitCreate, User, UserCreate, TokenPublic,
)
from .tokens import KeyRing, hash_secret, verify_secret

# Who may shape the organisation and the ledger.
ORG_ADMINS = ("ops", "regulator")
LEDGER_ADMINS = ("ops", "regulator")


def keyring(rt: Runtime) -> KeyRing:
    return rt.state["keyring"]


# --- sign-in -----------------------------------------------------------------

async def issue_token(rt: Runtime, grant_type: str, username: str = "", password: str = "",
                      client_id: str = "", client_secret: str = "") -> TokenPublic:
    async with rt.db.session() as s:
        if grant_type == "password":
            user = (await s.exec(select(User).where(User.username == username))).first()
            ok = verify_secret(user.password_hash if user else None, password)
            if not ok or not user or not user.active:
                raise AppError(401, "invalid_grant", "用户名或密码错误")
            claims = {"sub": user.id, "name": user.username, "unit": user.unit_id, "roles": user.roles}
        elif grant_type == "client_credentials":
            account = await s.get(Account, client_id) if client_id else None
            ok = verify_secret(account.client_secret_hash if account else None, client_secret)
            if not ok or not account or account.status != "active":
                raise AppError(401, "invalid_client", "客户端凭据无效")
            claims = {"sub": account.id, "name": account.handle, "unit": account.unit_id,
                      "roles": [CLIENT_ROLE], "account": account.id}
        else:
            raise AppError(400, "unsupported_grant_type", "仅支持 password 与 client_credentials")
    token, ttl = keyring(rt).sign(claims, rt.settings.token_issuer)
    return TokenPublic(access_token=token, expires_in=ttl)


# --- organisation --------------------------------------------------------------

async def create_region(rt: Runtime, who: Principal, data: RegionCreate) -> Region:
    who.require(*ORG_ADMINS)
    async with rt.unit_of_work() as s:
        if data.parent_id and not await s.get(Region, data.parent_id):
            raise invalid("parent_region_not_found", "上级区域不存在", {"parent_id": data.parent_id})
        if not data.parent_id and data.level != "province":
            raise invalid("parent_required", "非省级区域必须指定上级区域")
        region = Region(name=data.name, parent_id=data.parent_id, level=data.level)
        s.add(region)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.region.upserted", _region_event(region), region.id)
    return region


async def create_unit(rt: Runtime, who: Principal, data: UnitCreate) -> Unit:
    who.require(*ORG_ADMINS)
    async with rt.unit_of_work() as s:
        if not await s.get(Region, data.region_id):
            raise invalid("region_not_found", "所属区域不存在", {"region_id": data.region_id})
        if data.parent_id and not await s.get(Unit, data.parent_id):
            raise invalid("parent_unit_not_found", "上级单位不存在", {"parent_id": data.parent_id})
        unit = Unit(name=data.name, region_id=data.region_id, parent_id=data.parent_id, kind=data.kind)
        s.add(unit)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.unit.upserted", _unit_event(unit), unit.id)
    return unit


async def create_user(rt: Runtime, who: Principal, data: UserCreate) -> User:
    who.require("ops")
    async with rt.unit_of_work() as s:
        if not await s.get(Unit, data.unit_id):
            raise invalid("unit_not_found", "所属单位不存在", {"unit_id": data.unit_id})
        if (await s.exec(select(User).where(User.username == data.username))).first():
            raise conflict("username_taken", "用户名已被占用", {"username": data.username})
        user = User(username=data.username, display_name=data.display_name, unit_id=data.unit_id,
                    roles=data.roles, password_hash=hash_secret(data.password))
        s.add(user)
        await s.flush()
        await rt.outbox.emit(s, "govmedia.account.user.upserted", _user_event(user), user.id)
    return user


async def list_of(rt: Runtime, who: Principal, model, limit: int, cursor: str | None, **filters) -> tuple[list, str | None]:
    """A page of regions, units, users or accounts (ordered by id), with exact-match filters."""
    stmt = select(model).order_by(model.id).limit(limit + 1)
    if cursor:
        stmt = stmt.where(model.id > cursor)
    for name, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, name) == value)
    async with rt.db.session() as s:
        return page(list((await s.exec(stmt)).all()), limit)


# --- the ledger of accounts ------------------------------------------------------

async def register_account(rt: Runtime, who: Principal, data: AccountCreate) -> AccountPublic:
    """Register an existing account into the ledger, active at once (DESIGN.md §5)."""
    who.require(*LEDGER_ADMINS)
    client_secret = None
    async with rt.unit_of_work() as s:
        unit = await s.get(Unit, data.unit_id)
        if not unit:
            raise invalid("unit_not_found", "所属单位不存在", {"unit_id": data.unit_id})
        account = Account(
            unit_id=unit.id, region_id=unit.region_id, platform=data.platform, name=data.name, handle=data.handle,
            opened_on=data.opened_on, responsible=data.responsible.model_dump(), delivery_mode=data.delivery.mode,
        )
        if data.delivery.mode == "webhook":
            account.webhook_url = str(data.delivery.url)
            account.webhook_secret = data.delivery.secret
        else:
            client_secret = secrets.token_urlsafe(32)
            account.client_secret_hash = hash_secret(client_secret)
        s.add(account)
        try:
            await s.flush()
        except IntegrityError:
            raise conflict("account_exists", "该平台上此账号已登记", {"platform": data.platform, "handle": data.handle})
        await rt.outbox.emit(s, "govmedia.account.account.activated", _account_event(account, unit), account.id)
    return AccountPublic.of(account, client_secret)


async def get_account(rt: Runtime, who: Principal, account_id: str) -> AccountPublic:
    async with rt.db.session() as s:
        account = await s.get(Account, account_id)
    if not account:
        raise not_found("account", account_id)
    if who.account_id and who.account_id != account.id:
        raise forbidden("other_account", "客户端只能查看自己的账号")
    who.require_unit(account.unit_id, cross_unit_roles=("ops", "regulator", "supervisor"))
    return AccountPublic.of(account)


# --- events --------------------------------------------------------------------

def _region_event(r: Region) -> ev.RegionUpserted:
    return ev.RegionUpserted(region_id=r.id, name=r.name, parent_id=r.parent_id or "", level=r.level)


def _unit_event(u: Unit) -> ev.UnitUpserted:
    return ev.UnitUpserted(unit_id=u.id, name=u.name, region_id=u.region_id, parent_id=u.parent_id or "", kind=u.kind)


def _user_event(u: User) -> ev.UserUpserted:
    return ev.UserUpserted(user_id=u.id, username=u.username, display_name=u.display_name, unit_id=u.unit_id,
                           roles=u.roles, active=u.active)


def _account_event(a: Account, unit: Unit) -> ev.AccountChanged:
    return ev.AccountChanged(
        account_id=a.id, unit_id=a.unit_id, region_id=a.region_id, platform=a.platform, name=a.name,
        handle=a.handle, status=a.status, delivery_mode=a.delivery_mode, webhook_url=a.webhook_url or "",
        webhook_secret=a.webhook_secret or "", unit_kind=unit.kind,
    )


"""REST transport of the account service (DESIGN.md §5)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Response
from fastapi.responses import PlainTextResponse

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import usecases
from .ledger import ledger_csv
from .models import (
    Account, AccountCreate, AccountPublic, Page, Platform, Region, RegionCreate, RegionPublic, TokenPublic, Unit,
    UnitCreate, UnitPublic, User, UserCreate, UserPublic,
)

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]


@router.post("/v1/auth/token", response_model=TokenPublic, tags=["auth"])
async def token(
    rt: RuntimeDep,
    grant_type: Annotated[str, Form()] = "password",
    username: Annotated[str, Form(max_length=64)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    client_id: Annotated[str, Form(max_length=64)] = "",
    client_secret: Annotated[str, Form(max_length=200)] = "",
):
    """OAuth2 token endpoint: `password` for people, `client_credentials` for matrix clients."""
    return await usecases.issue_token(rt, grant_type, username, password, client_id, client_secret)


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(rt: RuntimeDep, response: Response):
    response.headers["Cache-Control"] = "public, max-age=300"
    return usecases.keyring(rt).jwks()


@router.post("/v1/regions", status_code=201, response_model=RegionPublic, tags=["organisation"])
async def create_region(rt: RuntimeDep, who: CurrentPrincipal, body: RegionCreate):
    return await usecases.create_region(rt, who, body)


@router.get("/v1/regions", response_model=Page, tags=["organisation"])
async def list_regions(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                       parent_id: str | None = None):
    items, nxt = await usecases.list_of(rt, who, Region, limit, cursor, parent_id=parent_id)
    return Page(items=[RegionPublic.model_validate(i, from_attributes=True) for i in items], next_cursor=nxt)


@router.post("/v1/units", status_code=201, response_model=UnitPublic, tags=["organisation"])
async def create_unit(rt: RuntimeDep, who: CurrentPrincipal, body: UnitCreate):
    return await usecases.create_unit(rt, who, body)


@router.get("/v1/units", response_model=Page, tags=["organisation"])
async def list_units(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                     region_id: str | None = None, name: str | None = None):
    items, nxt = await usecases.list_of(rt, who, Unit, limit, cursor, region_id=region_id, name=name)
    return Page(items=[UnitPublic.model_validate(i, from_attributes=True) for i in items], next_cursor=nxt)


@router.post("/v1/users", status_code=201, response_model=UserPublic, tags=["organisation"])
async def create_user(rt: RuntimeDep, who: CurrentPrincipal, body: UserCreate):
    return await usecases.create_user(rt, who, body)


@router.get("/v1/users", response_model=Page, tags=["organisation"])
async def list_users(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                     unit_id: str | None = None):
    # People see their own unit; ops and the regulator see everyone.
    if not who.has("ops", "regulator"):
        unit_id = who.unit_id
    items, nxt = await usecases.list_of(rt, who, User, limit, cursor, unit_id=unit_id)
    return Page(items=[UserPublic.model_validate(i, from_attributes=True) for i in items], next_cursor=nxt)


@router.post("/v1/accounts", status_code=201, response_model=AccountPublic, response_model_exclude_none=True,
             tags=["ledger"])
async def register_account(rt: RuntimeDep, who: CurrentPrincipal, body: AccountCreate):
    return await usecases.register_account(rt, who, body)


@router.get("/v1/accounts", response_model=Page, tags=["ledger"])
async def list_accounts(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                        region_id: str | None = None, unit_id: str | None = None,
                        platform: Platform | None = None, status: str | None = None):
    if not who.has("ops", "regulator", "supervisor"):
        unit_id = who.unit_id
    items, nxt = await usecases.list_of(rt, who, Account, limit, cursor, region_id=region_id, unit_id=unit_id,
                                        platform=platform, status=status)
    return Page(items=[AccountPublic.of(a).model_dump(exclude_none=True) for a in items], next_cursor=nxt)


@router.get("/v1/accounts/{account_id}", response_model=AccountPublic, response_model_exclude_none=True,
            tags=["ledger"])
async def get_account(rt: RuntimeDep, who: CurrentPrincipal, account_id: str):
    return await usecases.get_account(rt, who, account_id)


@router.get("/v1/ledger", response_class=PlainTextResponse, tags=["ledger"])
async def ledger(rt: RuntimeDep, who: CurrentPrincipal):
    """The unified ledger (统一台账) as CSV, for the regulator."""
    who.require(*usecases.LEDGER_ADMINS, "supervisor")
    return PlainTextResponse(await ledger_csv(rt), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": 'attachment; filename="ledger.csv"'})

"""REST transport of the account service (DESIGN.md §5)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from govmedia_kit.audit import AuditPublic, AuditVerifyPublic
from govmedia_kit.auth import REVOCATIONS_PATH, AnyPrincipal, CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import accounts, signin, tokens, usecases
from .ledger import as_csv, as_xlsx, ledger_rows, totals
from .models import (
    AccountCreate, AccountPublic, ApplicationCreate, ChangeIn, CloseIn, DeregisterIn, FilingPublic, OpenIn,
    Page, PasswordResetIn, Platform, PlatformApprovalIn, PlatformExceptionIn, Region, RegionCreate, RegionPublic, StepIn,
    StepPublic, Unit, UnitCreate, UnitPublic, UserCreate, UserDeactivate, UserPublic, UserReactivate, UserRolesIn,
)

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/.well-known/jwks.json", tags=["auth"])
async def jwks(rt: RuntimeDep, response: Response):
    # Never kept by a cache in between: a retired key must leave every verifier within
    # JWKS_REFRESH_S (govmedia_kit/auth.py).
    response.headers["Cache-Control"] = "no-cache"
    return signin.keyring(rt).jwks()


@router.get(REVOCATIONS_PATH, tags=["auth"])
async def token_revocations(rt: RuntimeDep, response: Response):
    """(subject, not-before) pairs: tokens of the subject issued before are refused. For the
    platform's services only: the ingress does not route it (the NetworkPolicy lets only
    the services and the ingress controller reach the account service)."""
    response.headers["Cache-Control"] = "no-store"
    return {"revocations": [{"sub": sub, "not_before": nbf} for sub, nbf in await tokens.load_revocations(rt)]}


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
    items, nxt = await usecases.list_users(rt, who, limit, cursor, unit_id=unit_id)
    return Page(items=[UserPublic.model_validate(i, from_attributes=True) for i in items], next_cursor=nxt)


@router.get("/v1/users/{user_id}", response_model=UserPublic, tags=["organisation"])
async def get_user(rt: RuntimeDep, who: CurrentPrincipal, user_id: str):
    return await usecases.get_user(rt, who, user_id)


@router.post("/v1/users/{user_id}/deactivate", response_model=UserPublic, tags=["organisation"])
async def deactivate_user(rt: RuntimeDep, who: CurrentPrincipal, user_id: str, body: UserDeactivate):
    """No more sign-in; the user's tokens stop working everywhere within JWKS_REFRESH_S (ops by
    reach, the unit's principal for unit roles)."""
    return await usecases.deactivate_user(rt, who, user_id, body)


@router.post("/v1/users/{user_id}/reactivate", response_model=UserPublic, tags=["organisation"])
async def reactivate_user(rt: RuntimeDep, who: CurrentPrincipal, user_id: str, body: UserReactivate):
    return await usecases.reactivate_user(rt, who, user_id, body)


@router.put("/v1/users/{user_id}/roles", response_model=UserPublic, tags=["organisation"])
async def set_user_roles(rt: RuntimeDep, who: CurrentPrincipal, user_id: str, body: UserRolesIn):
    """Replace the user's roles; tokens with the old ones stop working (a principal grants unit roles only)."""
    return await usecases.set_user_roles(rt, who, user_id, body)


@router.post("/v1/users/{user_id}/password", response_model=UserPublic, tags=["organisation"])
async def reset_password(rt: RuntimeDep, who: CurrentPrincipal, user_id: str, body: PasswordResetIn):
    """Set a new password; the user's tokens and sessions end."""
    return await usecases.reset_password(rt, who, user_id, body)


@router.get("/v1/users/{user_id}/audit", response_model=AuditPublic, tags=["organisation"])
async def user_audit(rt: RuntimeDep, who: CurrentPrincipal, user_id: str, limit: Limit = 100,
                     cursor: Annotated[int | None, Query(ge=0)] = None):
    """Every change to the user (hash-chained): who, when, before and after."""
    items, nxt = await usecases.user_audit(rt, who, user_id, limit, cursor)
    return AuditPublic(stream_id=user_id, items=items, next_cursor=str(nxt) if nxt else None)


@router.get("/v1/users/{user_id}/audit/verify", response_model=AuditVerifyPublic, tags=["organisation"])
async def user_audit_verify(rt: RuntimeDep, who: CurrentPrincipal, user_id: str):
    return await usecases.user_audit_verify(rt, who, user_id)


@router.post("/v1/accounts", status_code=201, response_model=AccountPublic, response_model_exclude_none=True,
             tags=["ledger"])
async def register_account(rt: RuntimeDep, who: CurrentPrincipal, body: AccountCreate):
    """Register an account that exists already: active and filed at once (regulator, ops)."""
    return await accounts.register_account(rt, who, body)


@router.get("/v1/accounts", response_model=Page, tags=["ledger"])
async def list_accounts(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                        region: str | None = None, unit: str | None = None,
                        platform: Platform | None = None, status: str | None = None,
                        region_id: str | None = None, unit_id: str | None = None):
    """Filters (DESIGN.md §5): `region` (its whole subtree), `unit`, `platform`, `status`;
    `region_id`/`unit_id` are accepted as the same."""
    items, nxt = await accounts.list_accounts(rt, who, limit, cursor, region or region_id, unit or unit_id,
                                              platform, status)
    return Page(items=[AccountPublic.of(a).model_dump(exclude_none=True) for a in items], next_cursor=nxt)


@router.get("/v1/accounts/{account_id}", response_model=AccountPublic, response_model_exclude_none=True,
            tags=["ledger"])
async def get_account(rt: RuntimeDep, who: AnyPrincipal, account_id: str):
    """People of the unit (or the regulator…), and the account's own matrix client."""
    return await accounts.get_account(rt, who, account_id)


@router.get("/v1/accounts/{account_id}/history", response_model=Page, tags=["lifecycle"])
async def account_history(rt: RuntimeDep, who: CurrentPrincipal, account_id: str):
    """Every recorded step: who, when, on which document."""
    steps = await accounts.history(rt, who, account_id)
    return Page(items=[StepPublic.model_validate(step, from_attributes=True) for step in steps])


@router.post("/v1/account-applications", status_code=201, response_model=AccountPublic,
             response_model_exclude_none=True, tags=["lifecycle"])
async def apply(rt: RuntimeDep, who: CurrentPrincipal, body: ApplicationCreate):
    """Apply to open an account (设立申请), after the unit's leadership meeting decided it."""
    return await accounts.apply(rt, who, body)


@router.post("/v1/accounts/{account_id}/approve-opening", response_model=AccountPublic,
             response_model_exclude_none=True, tags=["lifecycle"])
async def approve_opening(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: StepIn):
    """The unit's principal approves the opening."""
    return await accounts.approve_opening(rt, who, account_id, body)


@router.post("/v1/accounts/{account_id}/open", response_model=AccountPublic, response_model_exclude_none=True,
             tags=["lifecycle"])
async def mark_opened(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: OpenIn):
    """Opened on the platform: the filing is due within 10 working days."""
    return await accounts.mark_opened(rt, who, account_id, body)


@router.post("/v1/accounts/{account_id}/changes", response_model=AccountPublic, response_model_exclude_none=True,
             tags=["lifecycle"])
async def change(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: ChangeIn):
    """Change the name, the responsible people or the delivery; recorded and owed a filing."""
    return await accounts.change(rt, who, account_id, body)


@router.post("/v1/accounts/{account_id}/closing", response_model=AccountPublic, response_model_exclude_none=True,
             tags=["lifecycle"])
async def request_closing(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: CloseIn):
    return await accounts.request_closing(rt, who, account_id, body)


@router.post("/v1/accounts/{account_id}/approve-closing", response_model=AccountPublic,
             response_model_exclude_none=True, tags=["lifecycle"])
async def approve_closing(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: StepIn):
    """The principal approves closing; the public announcement is pushed to the account."""
    return await accounts.approve_closing(rt, who, account_id, body)


@router.post("/v1/accounts/{account_id}/deregister", response_model=AccountPublic,
             response_model_exclude_none=True, tags=["lifecycle"])
async def deregister(rt: RuntimeDep, who: CurrentPrincipal, account_id: str, body: DeregisterIn):
    """Deregistered on the platform: nothing more is delivered; filing due within 5 working days."""
    return await accounts.deregister(rt, who, account_id, body)


@router.get("/v1/filings", response_model=Page, tags=["lifecycle"])
async def list_filings(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                       overdue: bool = False, pending: bool = False):
    """Filings (备案) owed to the regulator; `overdue=true` lists those past their deadline."""
    items, nxt = await accounts.list_filings(rt, who, limit, cursor, overdue=overdue, pending=pending)
    return Page(items=[FilingPublic(**f.model_dump(), overdue=late) for f, late in items], next_cursor=nxt)


@router.post("/v1/filings/{filing_id}/file", response_model=FilingPublic, tags=["lifecycle"])
async def file(rt: RuntimeDep, who: CurrentPrincipal, filing_id: str, body: StepIn):
    """The regulator files it (备案)."""
    filing = await accounts.file(rt, who, filing_id, body)
    return FilingPublic(**filing.model_dump())


@router.post("/v1/units/{unit_id}/platform-exceptions", status_code=201, tags=["lifecycle"])
async def platform_exception(rt: RuntimeDep, who: CurrentPrincipal, unit_id: str, body: PlatformExceptionIn):
    """The regulator records an exception to "one account per unit per platform"."""
    exc = await accounts.record_platform_exception(rt, who, unit_id, body)
    return {"id": exc.id, "unit_id": exc.unit_id, "platform": exc.platform, "reason": exc.reason}


@router.get("/v1/platforms", tags=["lifecycle"])
async def platforms(rt: RuntimeDep, who: CurrentPrincipal):
    """The province's list of platforms accounts may be opened on."""
    return await accounts.approved_platforms(rt)


@router.put("/v1/platforms/{platform}", tags=["lifecycle"])
async def set_platform(rt: RuntimeDep, who: CurrentPrincipal, platform: Platform, body: PlatformApprovalIn):
    return await accounts.set_platform_approval(rt, who, platform, body.approved)


LedgerFormat = Literal["csv", "xlsx"]
_XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


@router.get("/v1/ledger", tags=["ledger"], response_class=Response,
            responses={200: {"content": {"text/csv": {}, _XLSX: {}}}})
async def ledger(rt: RuntimeDep, who: CurrentPrincipal, format: LedgerFormat = "csv", region: str | None = None,
                 unit: str | None = None, platform: Platform | None = None, status: str | None = None):
    """The unified ledger (统一台账) as CSV (UTF-8 with BOM) or XLSX, for the regulator."""
    rows = await ledger_rows(rt, who, region, unit, platform, status)
    if format == "xlsx":
        return Response(as_xlsx(rows), media_type=_XLSX,
                        headers={"Content-Disposition": 'attachment; filename="ledger.xlsx"'})
    return Response(as_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="ledger.csv"'})


@router.get("/v1/ledger/totals", tags=["ledger"])
async def ledger_totals(rt: RuntimeDep, who: CurrentPrincipal, region: str | None = None, unit: str | None = None,
                        platform: Platform | None = None, status: str | None = None):
    """Accounts counted by region, platform and status."""
    return totals(await ledger_rows(rt, who, region, unit, platform, status))

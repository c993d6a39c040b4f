"""REST transport of the petition service (DESIGN.md §5)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.errors import AppError
from govmedia_kit.limits import client_address
from govmedia_kit.runtime import RuntimeDep

from . import usecases
from .models import (
    Category, Page, PetitionCreate, PetitionPublic, PetitionReceipt, PetitionStatus, Status, TimelineEntryPublic,
)

router = APIRouter(tags=["petitions"])
Limit = Annotated[int, Query(ge=1, le=200)]
# Anonymous writes share one idempotency scope (the kit scopes keys by Authorization):
# a short, guessable key could replay another citizen's receipt, so it is refused.
MIN_ANONYMOUS_KEY = 16


def _client(request: Request) -> str:
    peer = request.client.host if request.client else "unknown"
    return client_address(peer, request.headers.get("x-forwarded-for"), request.app.state.runtime.state["trusted_proxies"])


async def intake_gate(request: Request, rt: RuntimeDep) -> None:
    """Runs before the body is read: the rate limit counts malformed submissions too."""
    key = request.headers.get("idempotency-key")
    if key is not None and not request.headers.get("authorization") and len(key) < MIN_ANONYMOUS_KEY:
        raise AppError(400, "idempotency_key_too_short",
                       f"匿名提交的 Idempotency-Key 至少 {MIN_ANONYMOUS_KEY} 个字符（建议使用 UUID）")
    usecases.admit(rt, "intake_limiter", _client(request))


async def track_gate(request: Request, rt: RuntimeDep) -> None:
    usecases.admit(rt, "track_limiter", _client(request))


@router.post("/v1/petitions", status_code=201, response_model=PetitionReceipt, dependencies=[Depends(intake_gate)])
async def create_petition(rt: RuntimeDep, body: PetitionCreate):
    """Public intake, no token. The answer carries the tracking code, shown only here."""
    return PetitionReceipt.of(await usecases.create_petition(rt, body))


@router.get("/v1/petitions", response_model=Page)
async def list_petitions(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                         status: Status | None = None, category: Category | None = None):
    items, nxt = await usecases.list_petitions(rt, who, limit, cursor, status, category)
    return Page(items=[PetitionPublic.of(p) for p in items], next_cursor=nxt)


@router.get("/v1/petitions/track/{tracking_code}", response_model=PetitionStatus, dependencies=[Depends(track_gate)])
async def track_petition(rt: RuntimeDep, tracking_code: str):
    """Public status lookup by tracking code: status and deadline, no contact data."""
    return PetitionStatus.of(await usecases.track_petition(rt, tracking_code))


@router.get("/v1/petitions/{petition_id}", response_model=PetitionPublic)
async def get_petition(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str):
    petition, reveal = await usecases.get_petition(rt, who, petition_id)
    return PetitionPublic.of(petition, reveal)


@router.get("/v1/petitions/{petition_id}/timeline", response_model=Page)
async def petition_timeline(rt: RuntimeDep, who: CurrentPrincipal, petition_id: str):
    entries = await usecases.petition_timeline(rt, who, petition_id)
    return Page(items=[TimelineEntryPublic.of(e) for e in entries])

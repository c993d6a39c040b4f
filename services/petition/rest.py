"""REST transport of the petition service (DESIGN.md §5)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.public import admit_public
from govmedia_kit.runtime import RuntimeDep

from . import usecases
from .models import (
    Category, Page, PetitionCreate, PetitionPublic, PetitionReceipt, PetitionStatus, Status, TimelineEntryPublic,
)

router = APIRouter(tags=["petitions"])
Limit = Annotated[int, Query(ge=1, le=200)]


async def intake_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["intake_limiter"], write=True)


async def track_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["track_limiter"], write=False)


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

"""REST transport of news clues (报料): the public intake and tracking, and the unit's triage."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.public import admit_public
from govmedia_kit.runtime import RuntimeDep

from . import clues
from .clues_models import ClueCreate, ClueDraftIn, CluePublic, ClueReceipt, ClueStatus, ClueTrack, ClueTriage
from .models import DraftPublic, Page
from .rest import with_etag

Limit = Annotated[int, Query(ge=1, le=200)]
public = APIRouter(tags=["clues"])  # no sign-in
router = APIRouter(tags=["clues"])


async def intake_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["clue_intake_limiter"], write=True)


async def track_gate(request: Request, rt: RuntimeDep) -> None:
    admit_public(request, rt.state["clue_track_limiter"], write=False)


@public.post("/v1/clues", status_code=201, response_model=ClueReceipt, dependencies=[Depends(intake_gate)])
async def submit_clue(rt: RuntimeDep, body: ClueCreate):
    """Public intake, no token; rate-limited per client address (429 with Retry-After).
    The answer carries the tracking code, shown only here."""
    return ClueReceipt.of(await clues.submit_clue(rt, body))


@public.get("/v1/clues/track/{tracking_code}", response_model=ClueTrack, dependencies=[Depends(track_gate)])
async def track_clue(rt: RuntimeDep, tracking_code: str):
    """Public status by tracking code: the status and the unit, nothing about who sent it."""
    clue, unit_name = await clues.track_clue(rt, tracking_code[:64])
    return ClueTrack.of(clue, unit_name)


@router.get("/v1/clues", response_model=Page)
async def list_clues(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                     status: ClueStatus | None = None):
    """The unit's clues (ops: its region subtree), contact masked."""
    items, nxt = await clues.list_clues(rt, who, limit, cursor, status)
    return Page(items=[clues.view(rt, c) for c in items], next_cursor=nxt)


@router.get("/v1/clues/{clue_id}", response_model=CluePublic)
async def get_clue(rt: RuntimeDep, who: CurrentPrincipal, clue_id: str):
    """One clue with its steps; the contact unmasked for the unit's own editors only."""
    clue, reveal, steps = await clues.get_clue(rt, who, clue_id)
    return clues.view(rt, clue, reveal, steps)


@router.post("/v1/clues/{clue_id}/triage", response_model=CluePublic)
async def triage_clue(rt: RuntimeDep, who: CurrentPrincipal, clue_id: str, body: ClueTriage):
    clue = await clues.triage_clue(rt, who, clue_id, body)
    return clues.view(rt, clue, clues.reveals_contact(who, clue))


@router.post("/v1/clues/{clue_id}/draft", status_code=201, response_model=DraftPublic)
async def draft_from_clue(rt: RuntimeDep, who: CurrentPrincipal, clue_id: str, response: Response,
                          body: ClueDraftIn | None = None):
    """An accepted clue becomes a draft of its unit (the clue's title and text unless given)."""
    clue, draft = await clues.draft_from_clue(rt, who, clue_id, body or ClueDraftIn())
    response.headers["Location"] = f"/v1/drafts/{draft.id}"
    return with_etag(response, draft)

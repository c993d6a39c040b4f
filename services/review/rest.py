"""REST transport of the review service (DESIGN.md §5)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import usecases
from .models import DecisionIn, Page, ReviewPublic, State

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]


@router.get("/v1/reviews", response_model=Page, tags=["reviews"])
async def list_reviews(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                       item_id: str | None = None, state: State | None = None, mine: bool = False):
    items, nxt = await usecases.list_reviews(rt, who, limit, cursor, item_id, state, mine)
    return Page(items=[ReviewPublic.of(v) for v in items], next_cursor=nxt)


@router.get("/v1/reviews/{review_id}", response_model=ReviewPublic, tags=["reviews"])
async def get_review(rt: RuntimeDep, who: CurrentPrincipal, review_id: str):
    return ReviewPublic.of(await usecases.get_review(rt, who, review_id))


@router.post("/v1/reviews/{review_id}/decisions", response_model=ReviewPublic, tags=["reviews"])
async def decide(rt: RuntimeDep, who: CurrentPrincipal, review_id: str, body: DecisionIn):
    """Decide the review's current level; answers with the review as it now stands."""
    return ReviewPublic.of(await usecases.decide(rt, who, review_id, body))

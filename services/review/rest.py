"""REST transport of the review service (DESIGN.md §5): each route calls one use case."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Query, Response

from govmedia_kit.audit import AuditPublic, AuditVerifyPublic
from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.runtime import RuntimeDep

from . import chains, delegations, findings, lexicons, usecases
from .models import (
    ChainIn,
    ChainPublic,
    DecisionIn,
    DelegationIn,
    DelegationPublic,
    LexiconPublic,
    OverrideIn,
    Page,
    ReviewPublic,
    State,
    TermsIn,
)

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]
IfMatch = Annotated[str | None, Header(max_length=64)]


# --- reviews ---------------------------------------------------------------------------

@router.get("/v1/reviews", response_model=Page, tags=["reviews"])
async def list_reviews(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                       item_id: str | None = None, state: State | None = None, mine: bool = False,
                       overdue: bool = False):
    items, nxt = await usecases.list_reviews(rt, who, limit, cursor, item_id, state, mine, overdue)
    return Page(items=[ReviewPublic.of(v) for v in items], next_cursor=nxt)


@router.get("/v1/reviews/{review_id}", response_model=ReviewPublic, tags=["reviews"])
async def get_review(rt: RuntimeDep, who: CurrentPrincipal, review_id: str):
    return ReviewPublic.of(await usecases.get_review(rt, who, review_id))


@router.post("/v1/reviews/{review_id}/decisions", response_model=ReviewPublic, tags=["reviews"])
async def decide(rt: RuntimeDep, who: CurrentPrincipal, review_id: str, body: DecisionIn):
    """Decide the review's current level; answers with the review as it now stands."""
    return ReviewPublic.of(await usecases.decide(rt, who, review_id, body))


@router.post("/v1/reviews/{review_id}/findings/{finding_id}/override", response_model=ReviewPublic,
             tags=["reviews"])
async def override_finding(rt: RuntimeDep, who: CurrentPrincipal, review_id: str, finding_id: str, body: OverrideIn):
    """A holder of the last level marks a blocking machine finding a false positive."""
    return ReviewPublic.of(await findings.override_finding(rt, who, review_id, finding_id, body))


@router.get("/v1/reviews/{review_id}/audit", response_model=AuditPublic, tags=["audit"])
async def audit(rt: RuntimeDep, who: CurrentPrincipal, review_id: str,
                limit: Annotated[int, Query(ge=1, le=1000)] = 200, cursor: Annotated[int | None, Query(ge=0)] = None):
    """The item's audit stream (every round of its review), oldest first; `cursor` is a sequence number."""
    stream, items, nxt = await usecases.audit_entries(rt, who, review_id, limit, cursor)
    return AuditPublic(stream_id=stream, items=items, next_cursor=str(nxt) if nxt is not None else None)


@router.get("/v1/reviews/{review_id}/audit/verify", response_model=AuditVerifyPublic, tags=["audit"])
async def audit_verify(rt: RuntimeDep, who: CurrentPrincipal, review_id: str):
    return await usecases.audit_verify(rt, who, review_id)


# --- review chains ---------------------------------------------------------------------

def _chain_etag(response: Response, chain: ChainPublic) -> ChainPublic:
    response.headers["ETag"] = f'"{chain.version}"'
    return chain


@router.get("/v1/review-chains/{unit_id}", response_model=ChainPublic, tags=["review chains"])
async def get_chain(rt: RuntimeDep, who: CurrentPrincipal, unit_id: str, response: Response):
    return _chain_etag(response, await chains.get_chain(rt, who, unit_id))


@router.put("/v1/review-chains/{unit_id}", response_model=ChainPublic, tags=["review chains"])
async def put_chain(rt: RuntimeDep, who: CurrentPrincipal, unit_id: str, body: ChainIn, response: Response,
                    if_match: IfMatch = None):
    """A new version of the unit's chain (`If-Match`, optional: the version it is based on)."""
    chain = await chains.put_chain(rt, who, unit_id, body, lexicons.parse_if_match(if_match))
    return _chain_etag(response, chain)


@router.get("/v1/review-chains/{unit_id}/versions", response_model=Page, tags=["review chains"])
async def chain_versions(rt: RuntimeDep, who: CurrentPrincipal, unit_id: str, limit: Limit = 50,
                         cursor: Annotated[int | None, Query(ge=0)] = None):
    items, nxt = await chains.chain_history(rt, who, unit_id, limit, cursor)
    return Page(items=items, next_cursor=str(nxt) if nxt is not None else None)


# --- lexicons --------------------------------------------------------------------------

def _lexicon_etag(response: Response, lexicon: LexiconPublic) -> LexiconPublic:
    response.headers["ETag"] = f'"{lexicon.version}"'
    return lexicon


@router.get("/v1/lexicons", response_model=LexiconPublic, tags=["lexicons"])
async def get_lexicons(rt: RuntimeDep, who: CurrentPrincipal, response: Response):
    return _lexicon_etag(response, await lexicons.get_lexicons(rt, who))


@router.put("/v1/lexicons", response_model=LexiconPublic, tags=["lexicons"])
async def put_lexicons(rt: RuntimeDep, who: CurrentPrincipal, response: Response,
                       data: Annotated[Any, Body()], if_match: IfMatch = None,
                       change: Annotated[str, Query(max_length=500)] = ""):
    """Replace the whole LexiconData (`If-Match` required); a new version."""
    lexicon = await lexicons.put_lexicons(rt, who, lexicons.parse_if_match(if_match), data, change)
    return _lexicon_etag(response, lexicon)


@router.post("/v1/lexicons/terms", response_model=LexiconPublic, tags=["lexicons"])
async def edit_terms(rt: RuntimeDep, who: CurrentPrincipal, body: TermsIn, response: Response,
                     if_match: IfMatch = None):
    """Add and remove terms of one category; a new version (`If-Match` optional)."""
    return _lexicon_etag(response, await lexicons.edit_terms(rt, who, body, lexicons.parse_if_match(if_match)))


@router.get("/v1/lexicons/versions", response_model=Page, tags=["lexicons"])
async def lexicon_versions(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50,
                           cursor: Annotated[int | None, Query(ge=0)] = None):
    items, nxt = await lexicons.list_versions(rt, who, limit, cursor)
    return Page(items=items, next_cursor=str(nxt) if nxt is not None else None)


@router.get("/v1/lexicons/versions/{version}", response_model=LexiconPublic, tags=["lexicons"])
async def lexicon_version(rt: RuntimeDep, who: CurrentPrincipal, version: int, response: Response):
    return _lexicon_etag(response, await lexicons.get_lexicons(rt, who, version))


# --- delegations -----------------------------------------------------------------------

@router.post("/v1/delegations", status_code=201, response_model=DelegationPublic, tags=["delegations"])
async def create_delegation(rt: RuntimeDep, who: CurrentPrincipal, body: DelegationIn, response: Response):
    delegation = await delegations.create_delegation(rt, who, body)
    response.headers["Location"] = f"/v1/delegations/{delegation.id}"
    return delegation


@router.get("/v1/delegations", response_model=Page, tags=["delegations"])
async def list_delegations(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                           active: bool | None = None, to_user_id: str | None = None,
                           from_user_id: str | None = None):
    items, nxt = await delegations.list_delegations(rt, who, limit, cursor, active, to_user_id, from_user_id)
    return Page(items=items, next_cursor=nxt)


@router.delete("/v1/delegations/{delegation_id}", response_model=DelegationPublic, tags=["delegations"])
async def revoke_delegation(rt: RuntimeDep, who: CurrentPrincipal, delegation_id: str):
    return await delegations.revoke_delegation(rt, who, delegation_id)

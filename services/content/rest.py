"""REST transport of the content service (DESIGN.md §5)."""
from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response

from govmedia_kit.audit import AuditPublic, AuditVerifyPublic
from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.errors import AppError
from govmedia_kit.runtime import RuntimeDep

from . import usecases
from .models import Draft, DraftCreate, DraftIn, DraftPublic, DiffPublic, Page, RetractIn, RevisionPublic, Status

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]
_ETAG = re.compile(r'^(?:W/)?"?(\d{1,18})"?$')


def with_etag(response: Response, draft: Draft) -> DraftPublic:
    """The ETag is the version: a client sends it back in If-Match to change the draft."""
    response.headers["ETag"] = f'"{draft.version}"'
    return DraftPublic.of(draft)


def parse_if_match(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    match = _ETAG.match(value.strip())
    if not match:
        raise AppError(400, "invalid_if_match", 'If-Match 须为稿件版本号，例如 "3"', {"if_match": value[:50]})
    return int(match.group(1))


@router.post("/v1/drafts", status_code=201, response_model=DraftPublic, tags=["drafts"])
async def create_draft(rt: RuntimeDep, who: CurrentPrincipal, body: DraftCreate, response: Response):
    draft = await usecases.create_draft(rt, who, body)
    response.headers["Location"] = f"/v1/drafts/{draft.id}"
    return with_etag(response, draft)


@router.get("/v1/drafts", response_model=Page, tags=["drafts"])
async def list_drafts(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                      status: Status | None = None):
    items, nxt = await usecases.list_drafts(rt, who, limit, cursor, status)
    return Page(items=[DraftPublic.of(d) for d in items], next_cursor=nxt)


@router.get("/v1/drafts/{draft_id}", response_model=DraftPublic, tags=["drafts"])
async def get_draft(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, response: Response):
    return with_etag(response, await usecases.get_draft(rt, who, draft_id))


@router.put("/v1/drafts/{draft_id}", response_model=DraftPublic, tags=["drafts"])
async def update_draft(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, body: DraftIn, response: Response,
                       if_match: Annotated[str | None, Header(max_length=64)] = None):
    draft = await usecases.update_draft(rt, who, draft_id, parse_if_match(if_match), body)
    return with_etag(response, draft)


@router.get("/v1/drafts/{draft_id}/revisions", response_model=Page, tags=["drafts"])
async def list_revisions(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, limit: Limit = 50,
                         cursor: str | None = None):
    items, nxt = await usecases.list_revisions(rt, who, draft_id, limit, cursor)
    return Page(items=[RevisionPublic.of(r) for r in items], next_cursor=nxt)


@router.get("/v1/drafts/{draft_id}/diff", response_model=DiffPublic, tags=["drafts"])
async def diff_revisions(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str,
                         from_version: Annotated[int, Query(alias="from", ge=1)],
                         to_version: Annotated[int, Query(alias="to", ge=1)]):
    """What changed from one version to another: short fields before/after, the body as a
    line diff with character-level opcodes per changed line (see services/content/diffing.py)."""
    return DiffPublic.model_validate(await usecases.diff_revisions(rt, who, draft_id, from_version, to_version))


@router.get("/v1/drafts/{draft_id}/audit", response_model=AuditPublic, tags=["drafts"])
async def draft_audit(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, limit: Limit = 100,
                      cursor: Annotated[int | None, Query(ge=0)] = None):
    """Every action on the draft, hash-chained, oldest first; `cursor` is a sequence number."""
    items, nxt = await usecases.draft_audit(rt, who, draft_id, limit, cursor)
    return AuditPublic(stream_id=draft_id, items=items, next_cursor=str(nxt) if nxt is not None else None)


@router.get("/v1/drafts/{draft_id}/audit/verify", response_model=AuditVerifyPublic, tags=["drafts"])
async def draft_audit_verify(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str):
    """Recompute the chain; `first_broken` names the first entry someone altered."""
    return await usecases.draft_audit_verify(rt, who, draft_id)


@router.post("/v1/drafts/{draft_id}/submit", response_model=DraftPublic, tags=["drafts"])
async def submit_draft(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, response: Response):
    return with_etag(response, await usecases.submit_draft(rt, who, draft_id))


@router.post("/v1/items/{item_id}/retract", response_model=DraftPublic, tags=["items"])
async def retract_item(rt: RuntimeDep, who: CurrentPrincipal, item_id: str, body: RetractIn, response: Response):
    return with_etag(response, await usecases.retract_item(rt, who, item_id, body.reason))

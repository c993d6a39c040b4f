"""REST transport of the cloud library (云稿库): search and read approved items, reprint one."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from govmedia_kit.auth import CurrentPrincipal
from govmedia_kit.grpc import parse_request
from govmedia_kit.runtime import RuntimeDep

from . import library
from .library import LibraryItem, LibraryQuery, ReprintIn
from .models import DraftPublic, Page
from .rest import with_etag

router = APIRouter(tags=["library"])
Limit = Annotated[int, Query(ge=1, le=200)]
Text = Annotated[str | None, Query(max_length=200)]


@router.get("/v1/library", response_model=Page)
async def list_library(rt: RuntimeDep, who: CurrentPrincipal, q: Text = None, category: Text = None,
                       region: Text = None, date_from: Annotated[str | None, Query(alias="from", max_length=40)] = None,
                       date_to: Annotated[str | None, Query(alias="to", max_length=40)] = None,
                       limit: Limit = 50, cursor: Annotated[str | None, Query(max_length=200)] = None):
    """Approved items of every unit, newest approval first. `q` searches title, subtitle and
    body; `region` is a region id (its whole subtree); `from`/`to` are dates (Beijing time,
    both days included) or ISO datetimes, on the approval time."""
    query = parse_request(LibraryQuery, q=q, category=category, region=region, since=date_from, until=date_to)
    items, nxt = await library.list_library(rt, who, query, limit, cursor)
    return Page(items=items, next_cursor=nxt)


@router.get("/v1/library/{item_id}", response_model=LibraryItem)
async def get_library_item(rt: RuntimeDep, who: CurrentPrincipal, item_id: str):
    return await library.get_library_item(rt, who, item_id)


@router.post("/v1/library/{item_id}/reprint", status_code=201, response_model=DraftPublic)
async def reprint(rt: RuntimeDep, who: CurrentPrincipal, item_id: str, response: Response,
                  body: ReprintIn | None = None):
    """A new draft of the caller's unit reprinting the item (editor, ops): source named, title locked."""
    draft = await library.reprint(rt, who, item_id, body or ReprintIn())
    response.headers["Location"] = f"/v1/drafts/{draft.id}"
    return with_etag(response, draft)

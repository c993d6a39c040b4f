"""REST transport of attachments: upload (streamed), list, fetch (with ranges), remove."""
from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from govmedia_kit.auth import AnyPrincipal, CurrentPrincipal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import AppError
from govmedia_kit.guard import BodyTooLarge
from govmedia_kit.runtime import RuntimeDep

from . import attachments
from .models import AttachmentPublic, DraftPublic, Page
from .rest import parse_if_match, with_etag

router = APIRouter(tags=["attachments"])
UPLOAD_PATH = r"/v1/drafts/[^/]+/attachments"  # the body rule of the front door (service.py)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "description": "The raw file, with its Content-Type: image/jpeg, image/png, image/gif, image/webp "
                       "(≤ CONTENT_IMAGE_MAX_BYTES, 10 MiB) or video/mp4 (≤ CONTENT_VIDEO_MAX_BYTES, 200 MiB).",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in attachments.TYPES},
    }
}


@router.post("/v1/drafts/{draft_id}/attachments", status_code=201, response_model=AttachmentPublic,
             openapi_extra=_UPLOAD_DOC)
async def upload_attachment(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, request: Request,
                            response: Response, name: Annotated[str, Query(max_length=300)],
                            if_match: Annotated[str | None, Header(max_length=64)] = None):
    """Attach a file to a draft (an edit: `If-Match` with the draft's version). The answer's
    ETag is the draft's new version. 413 `attachment_too_large`, 415 `unsupported_attachment_type`
    or `attachment_type_mismatch` when the bytes are not of the declared type."""
    length = request.headers.get("content-length")
    attachment, draft = await attachments.add_attachment(
        rt, who, draft_id, parse_if_match(if_match), name, request.headers.get("content-type"),
        int(length) if length and length.isdigit() else None, _body(request, rt))
    response.headers["ETag"] = f'"{draft.version}"'
    response.headers["Location"] = attachment.meta()["url"]
    return AttachmentPublic.of(attachment, draft.version)


@router.get("/v1/drafts/{draft_id}/attachments", response_model=Page)
async def list_attachments(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str):
    return Page(items=[AttachmentPublic.of(a) for a in await attachments.list_attachments(rt, who, draft_id)])


@router.delete("/v1/drafts/{draft_id}/attachments/{attachment_id}", response_model=DraftPublic)
async def remove_attachment(rt: RuntimeDep, who: CurrentPrincipal, draft_id: str, attachment_id: str,
                            response: Response, if_match: Annotated[str | None, Header(max_length=64)] = None):
    draft = await attachments.remove_attachment(rt, who, draft_id, attachment_id, parse_if_match(if_match))
    return with_etag(response, draft)


@router.get("/v1/attachments/{attachment_id}", response_class=StreamingResponse,
            responses={200: {"content": {t: {} for t in attachments.TYPES}}, 206: {"description": "a byte range"},
                       304: {"description": "not modified (If-None-Match)"}})
async def fetch_attachment(rt: RuntimeDep, who: AnyPrincipal, attachment_id: str, request: Request):
    """The file. While its item is not approved or under embargo: the draft's unit (ops
    reaching it); once approved and released: anyone signed in, matrix clients included.
    ETag = its SHA-256; `Range` works."""
    attachment, draft = await attachments.get_attachment(rt, who, attachment_id)
    etag = f'"{attachment.sha256}"'
    headers = {
        "ETag": etag,
        # Approved files never change under their id; a draft's may stop being readable.
        "Cache-Control": ("private, max-age=300" if draft.status == "approved" and not draft.under_embargo(utcnow())
                          else "private, no-cache"),
        "Accept-Ranges": "bytes",
        "X-Content-Type-Options": "nosniff",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(attachment.name)}",
    }
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    size, start, end, status = attachment.size, 0, attachment.size, 200
    wanted = request.headers.get("range")
    if wanted and request.headers.get("if-range", etag) == etag:
        span = _byte_range(wanted, size)
        if span is None:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
        if span:
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    body = await attachments.open_attachment(rt, attachment, start, end)
    headers["Content-Length"] = str(end - start)
    return StreamingResponse(body, status_code=status, media_type=attachment.content_type, headers=headers)


async def _body(request: Request, rt):
    """The request body as it arrives. The front door's BodyTooLarge (a body without a length
    passing the upload limit) is answered here (413) with the service's own limit; an
    ExceptionGroup wrapping it (a BaseHTTPMiddleware in between, as the idempotency layer was
    before it became pure ASGI) is unwrapped the same way."""
    try:
        async for chunk in request.stream():
            yield chunk
    except BodyTooLarge:
        raise _payload_too_large(rt)
    except ClientDisconnect:
        raise _incomplete()
    except BaseExceptionGroup as group:
        if group.subgroup(BodyTooLarge) is not None:
            raise _payload_too_large(rt)
        if group.subgroup(ClientDisconnect) is not None:
            raise _incomplete()
        raise


def _payload_too_large(rt) -> AppError:
    limit = max(rt.settings.image_max_bytes, rt.settings.video_max_bytes)
    return AppError(413, "payload_too_large", f"请求体过大（上限 {limit} 字节）", {"limit": limit})


def _incomplete() -> AppError:
    return AppError(400, "upload_incomplete", "上传未完成，连接已断开")


def _byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """One `bytes=a-b` range as [start, end); False to ignore the header (several ranges or
    a form we do not serve: the whole file answers), None when it cannot be satisfied."""
    match = _RANGE.match(header.strip())
    if not match or match.group(1) == match.group(2) == "":
        return False
    first, last = match.groups()
    if first == "":  # the last n bytes
        n = int(last)
        return (max(size - n, 0), size) if n else None
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        return None
    return start, end

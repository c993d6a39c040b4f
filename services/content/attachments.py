"""Attachments (images and video) of a draft: upload, list, serve, remove.

An attachment is part of the draft's content: adding or removing one is an edit (only while
the draft is a draft or rejected, based on its version like any edit) that bumps the version
and stores a revision, and the snapshot sent to review and dispatch carries the list.

Uploads are streamed: the body goes to the storage (a temporary file on local disk) while
it is hashed and counted; the first bytes must be those of the declared type (415
`attachment_type_mismatch`), and the size that type's limit (413 `attachment_too_large`).
Nothing is kept of a refused upload.

Who fetches a file: the draft's unit (and ops reaching it) while the item is not approved
or is under embargo (`publish_at` ahead); once it is approved and released, anyone signed
in, matrix clients included (they show the item). A matrix client's token fetches
attachments of approved, released items only.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator

from sqlalchemy import func
from sqlmodel import select

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import AppError, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from .models import EDITABLE, Attachment, Draft, directory
from .storage import AttachmentStorage, Stored
from .usecases import get_draft, load_for_edit, record_revision, require_if_match, require_writer

log = logging.getLogger(__name__)

# Declared type → kind. Anything else (svg, which can carry script; mov; …) is refused.
TYPES = {
    "image/jpeg": "image",
    "image/png": "image",
    "image/gif": "image",
    "image/webp": "image",
    "video/mp4": "video",
}
SNIFF_BYTES = 12
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    image_max_bytes: int
    video_max_bytes: int
    max_attachments: int

    def for_kind(self, kind: str) -> int:
        return self.image_max_bytes if kind == "image" else self.video_max_bytes


def limits_of(rt: Runtime) -> Limits:
    st = rt.settings
    return Limits(st.image_max_bytes, st.video_max_bytes, st.max_attachments)


def storage_of(rt: Runtime) -> AttachmentStorage:
    return rt.state["attachment_storage"]


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file show, among the accepted ones."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":  # ISO base media: the brand box opens an MP4 file
        return "video/mp4"
    return None


def media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip().lower()


def clean_name(raw: str | None) -> str:
    """The file name for people: its last path segment, no control characters, ≤ 200 chars."""
    name = re.split(r"[\\/]", (raw or "").strip())[-1].strip()
    if not name or len(name) > 200 or _BAD_NAME.search(name) or name in (".", ".."):
        raise invalid("validation_failed", "请求参数不合法",
                      [{"field": "name", "problem": "a file name of 1 to 200 characters, without control characters",
                        "type": "value_error"}])
    return name


def check_declared(content_type: str | None, declared_length: int | None, limits: Limits) -> tuple[str, str, int]:
    """Before reading anything: the declared type is one we take, the declared length fits it."""
    ctype = media_type(content_type)
    kind = TYPES.get(ctype)
    if kind is None:
        raise AppError(415, "unsupported_attachment_type", "附件只能是 JPEG、PNG、GIF、WebP 图片或 MP4 视频",
                       {"content_type": ctype, "accepted": sorted(TYPES)})
    limit = limits.for_kind(kind)
    if declared_length is not None and declared_length > limit:
        raise _too_large(ctype, limit)
    return ctype, kind, limit


def _too_large(ctype: str, limit: int) -> AppError:
    return AppError(413, "attachment_too_large", f"附件过大（{ctype} 上限 {limit} 字节）",
                    {"content_type": ctype, "limit": limit})


async def checked(chunks: AsyncIterable[bytes], ctype: str, limit: int) -> AsyncIterator[bytes]:
    """The upload as it arrives, refused as soon as its bytes are not of `ctype` or exceed `limit`."""
    head, size, sniffed = b"", 0, False
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > limit:
            raise _too_large(ctype, limit)
        if not sniffed:
            head += chunk
            if len(head) < SNIFF_BYTES:
                continue
            _check_head(head, ctype)
            sniffed = True
            chunk, head = head, b""
        yield chunk
    if not sniffed:  # shorter than the sniffing window
        if not head:
            raise invalid("attachment_empty", "附件内容为空")
        _check_head(head, ctype)
        yield head


def _check_head(head: bytes, ctype: str) -> None:
    found = sniff(head)
    if found != ctype:
        raise AppError(415, "attachment_type_mismatch", "附件内容与声明的类型不符",
                       {"declared": ctype, "detected": found})


# --- use cases -----------------------------------------------------------------------

async def add_attachment(rt: Runtime, who: Principal, draft_id: str, if_match: int | None, name: str | None,
                         content_type: str | None, declared_length: int | None,
                         body: AsyncIterable[bytes]) -> tuple[Attachment, Draft]:
    """Store an uploaded file and attach it to the draft (a new version and revision)."""
    require_if_match(if_match)
    limits = limits_of(rt)
    file_name = clean_name(name)
    ctype, kind, limit = check_declared(content_type, declared_length, limits)
    # Every check that needs no bytes comes first: nobody uploads 200 MiB to hear 409.
    async with rt.db.session() as s:
        draft = await s.get(Draft, draft_id)
        if draft is None:
            raise not_found("draft", draft_id)
        _check_editable(who, draft, if_match, limits)

    storage = storage_of(rt)
    stored: Stored = await storage.put(checked(body, ctype, limit))
    try:
        async with rt.unit_of_work() as s:
            draft = await load_for_edit(s, who, draft_id, if_match)  # again: it may have changed meanwhile
            _check_room(draft, limits)
            attachment = Attachment(draft_id=draft.id, kind=kind, content_type=ctype, size=stored.size,
                                    sha256=stored.sha256, name=file_name, storage_key=stored.key,
                                    created_by=who.subject)
            s.add(attachment)
            draft.attachments = [*draft.attachments, attachment.meta()]
            await record_revision(s, who, draft, ["attachments"], if_match)
    except BaseException:
        await storage.delete(stored.key)
        raise
    log.info("attachment %s (%s, %d bytes) added to draft %s v%d", attachment.id, ctype, stored.size, draft.id,
             draft.version)
    return attachment, draft


def attachment_not_found(attachment_id: str) -> AppError:
    return AppError(404, "attachment_not_found", "未找到附件", {"id": attachment_id})


def _check_editable(who: Principal, draft: Draft, if_match: int, limits: Limits) -> None:
    require_writer(who, draft)
    if draft.version != if_match:
        raise AppError(409, "version_conflict", "稿件已被他人修改，请刷新后重试",
                       {"current_version": draft.version, "if_match": if_match})
    if draft.status not in EDITABLE:
        raise AppError(409, "not_editable", "稿件在审核中或已通过，不能修改", {"status": draft.status})
    _check_room(draft, limits)


def _check_room(draft: Draft, limits: Limits) -> None:
    if len(draft.attachments) >= limits.max_attachments:
        raise invalid("too_many_attachments", f"每篇稿件最多 {limits.max_attachments} 个附件",
                      {"limit": limits.max_attachments})


async def remove_attachment(rt: Runtime, who: Principal, draft_id: str, attachment_id: str,
                            if_match: int | None) -> Draft:
    """Detach a file (a new version and revision); its bytes go unless another row shares them."""
    async with rt.unit_of_work() as s:
        draft = await load_for_edit(s, who, draft_id, if_match)
        attachment = await s.get(Attachment, attachment_id)
        if attachment is None or attachment.draft_id != draft.id:
            raise attachment_not_found(attachment_id)
        key = attachment.storage_key
        await s.delete(attachment)
        draft.attachments = [a for a in draft.attachments if a["id"] != attachment_id]
        await record_revision(s, who, draft, ["attachments"], if_match)
    async with rt.db.session() as s:
        shared = await s.scalar(select(func.count()).select_from(Attachment).where(Attachment.storage_key == key))
    if not shared:
        await storage_of(rt).delete(key)
    return draft


async def list_attachments(rt: Runtime, who: Principal, draft_id: str) -> list[Attachment]:
    await get_draft(rt, who, draft_id)
    async with rt.db.session() as s:
        stmt = select(Attachment).where(Attachment.draft_id == draft_id).order_by(Attachment.id)
        return list((await s.exec(stmt)).all())


async def get_attachment(rt: Runtime, who: Principal, attachment_id: str) -> tuple[Attachment, Draft]:
    """One attachment and its draft, if the caller may fetch it (module docstring)."""
    async with rt.db.session() as s:
        attachment = await s.get(Attachment, attachment_id)
        draft = await s.get(Draft, attachment.draft_id) if attachment else None
        if attachment is None or draft is None:
            raise attachment_not_found(attachment_id)
        if draft.status != "approved" or draft.under_embargo(utcnow()):
            if CLIENT_ROLE in who.roles:
                raise forbidden("client_not_allowed", "客户端凭据只能获取已审核通过且已到发布时间的稿件的附件")
            await directory.require_reach(s, who, draft.unit_id, "ops")
    return attachment, draft


async def open_attachment(rt: Runtime, attachment: Attachment, start: int = 0,
                          end: int | None = None) -> AsyncIterator[bytes]:
    try:
        return await storage_of(rt).open(attachment.storage_key, start, end)
    except FileNotFoundError:
        log.error("attachment %s: its bytes (key %s) are missing from the storage", attachment.id,
                  attachment.storage_key)
        raise AppError(404, "attachment_missing", "附件文件已不存在", {"id": attachment.id})

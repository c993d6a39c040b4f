"""The cloud library (云稿库, "中央厨房"): every approved item of every unit, for every unit
to read and reprint with attribution kept (注明出处).

An item is in the library while it is approved: a retraction takes it out at once (it is a
status of the same row). A reprint is a new draft of the caller's unit linked to the item
(`reprint_of`, carried to review and dispatch in ItemSnapshot.reprint_of), with the item's
title locked and its source named: the item's unit and the item's URL, or, when the item
is itself a reprint, the source it names (attribution goes to where the content comes from).
Without targets, a reprint goes to the reprinting unit's own reach, never beyond it.

An embargoed item (`publish_at` still ahead) is in the library only for its own unit's people
(its reviewers among them) and ops reaching the unit; for everyone else it is not there
(404 `library_item_not_found`, absent from lists, not reprintable) until `publish_at`.
"""
from __future__ import annotations

import base64
import binascii
from datetime import date, datetime, time, timedelta

from pydantic import BaseModel, Field as PField, field_validator
from sqlalchemy import and_, func, or_
from sqlmodel import select

from govmedia_kit.auth import Principal
from govmedia_kit.db import as_utc, iso, new_id, utcnow
from govmedia_kit.errors import AppError, invalid
from govmedia_kit.runtime import Runtime
from govmedia_kit.workdays import SHANGHAI

from .models import Attachment, Draft, Strict, TargetsIn, _blank_is_none, directory
from .usecases import AUTHORS, load_for_write, new_draft

EXCERPT_CHARS = 120


# --- request and response bodies ------------------------------------------------------

def _bound(value, end: bool):
    """A `from`/`to` filter: a date (Beijing time; `to` includes the whole day) or an ISO
    datetime (without an offset: Beijing time). Answers the exclusive upper bound for `to`."""
    value = _blank_is_none(value)
    if value is None or isinstance(value, datetime):
        return value
    text = str(value).strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime.combine(day + timedelta(days=1 if end else 0), time(), SHANGHAI)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=SHANGHAI)
    return moment + timedelta(microseconds=1) if end else moment


class LibraryQuery(Strict):
    model_config = {"extra": "forbid", "str_strip_whitespace": True, "populate_by_name": True}

    q: str | None = PField(default=None, max_length=100)
    category: str | None = PField(default=None, max_length=50)
    region: str | None = PField(default=None, max_length=32)
    since: datetime | None = PField(default=None, alias="from")
    until: datetime | None = PField(default=None, alias="to")  # exclusive

    @field_validator("q", "category", "region", mode="before")
    @classmethod
    def blank_is_none(cls, value):
        return _blank_is_none(value)

    @field_validator("since", mode="before")
    @classmethod
    def parse_since(cls, value):
        return _bound(value, end=False)

    @field_validator("until", mode="before")
    @classmethod
    def parse_until(cls, value):
        return _bound(value, end=True)


class ReprintIn(Strict):
    """The body of a reprint (optional): where the new draft is to go; the reprinting unit's own
    reach (its region's subtree) unless given, and never beyond it.
    The draft is reviewed by the reprinting unit's three levels before anything is pushed."""

    targets: TargetsIn | None = None


class LibraryItem(BaseModel):
    id: str
    unit_id: str
    unit_name: str | None
    version: int
    title: str
    subtitle: str | None
    excerpt: str
    body: str | None  # the whole text on GET /v1/library/{id}; lists carry the excerpt only
    category: str | None
    cover_url: str | None
    source: dict | None
    attachments: list[dict]
    reprint_of: str | None
    reprint_count: int
    approved_at: str | None

    @classmethod
    def of(cls, d: Draft, unit_name: str | None, full: bool = False) -> "LibraryItem":
        excerpt = d.body[:EXCERPT_CHARS] + ("…" if len(d.body) > EXCERPT_CHARS else "")
        return cls(id=d.id, unit_id=d.unit_id, unit_name=unit_name or None, version=d.version, title=d.title,
                   subtitle=d.subtitle, excerpt=excerpt, body=d.body if full else None, category=d.category,
                   cover_url=d.cover_url, source=d.source, attachments=d.attachments, reprint_of=d.reprint_of,
                   reprint_count=d.reprint_count, approved_at=iso(d.approved_at))


# --- use cases -------------------------------------------------------------------------

def _not_in_library(item_id: str) -> AppError:
    return AppError(404, "library_item_not_found", "云稿库中没有该稿件", {"id": item_id})


def released_filter(who: Principal, now: datetime):
    """The embargo in SQL: released items (no `publish_at`, or one whose whole second has
    passed: at most a second late, never early), or any of the caller's reach (None: no limit)."""
    reach = directory.reach_filter(Draft.unit_id, who, "ops")
    if reach is None:
        return None
    second = iso(now.replace(microsecond=0))[:19]  # "YYYY-MM-DDTHH:MM:SS", as publish_at begins
    return or_(Draft.publish_at.is_(None), func.substr(Draft.publish_at, 1, 19) < second, reach)


async def may_see_embargoed(s, who: Principal, draft: Draft) -> bool:
    """The item is released, or the caller is of its unit (or ops reaching it)."""
    if not draft.under_embargo(utcnow()):
        return True
    try:
        await directory.require_reach(s, who, draft.unit_id, "ops")
    except AppError:
        return False
    return True


async def list_library(rt: Runtime, who: Principal, query: LibraryQuery, limit: int,
                       cursor: str | None) -> tuple[list[LibraryItem], str | None]:
    """Approved items of every unit, newest approval first (any signed-in person)."""
    units = directory.table
    stmt = (select(Draft, units.c.name).outerjoin(units, units.c.unit_id == Draft.unit_id)
            .where(Draft.status == "approved")
            .order_by(Draft.approved_at.desc(), Draft.id.desc()).limit(limit + 1))
    released = released_filter(who, utcnow())
    if released is not None:
        stmt = stmt.where(released)
    if query.q:
        stmt = stmt.where(or_(*(column.icontains(query.q, autoescape=True)
                                for column in (Draft.title, Draft.subtitle, Draft.body))))
    if query.category:
        stmt = stmt.where(Draft.category == query.category)
    if query.region:
        within = select(units.c.unit_id).where(units.c.region_path.contains(f"/{query.region}/", autoescape=True))
        stmt = stmt.where(Draft.unit_id.in_(within))
    if query.since:
        stmt = stmt.where(Draft.approved_at >= query.since)
    if query.until:
        stmt = stmt.where(Draft.approved_at < query.until)
    if cursor:
        at, last_id = _decode_cursor(cursor)
        stmt = stmt.where(or_(Draft.approved_at < at, and_(Draft.approved_at == at, Draft.id < last_id)))
    async with rt.db.session() as s:
        rows = list((await s.exec(stmt)).all())
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = _encode_cursor(rows[-1][0])
    return [LibraryItem.of(d, name) for d, name in rows], nxt


async def get_library_item(rt: Runtime, who: Principal, item_id: str) -> LibraryItem:
    async with rt.db.session() as s:
        draft = await s.get(Draft, item_id)
        if draft is None or draft.status != "approved" or not await may_see_embargoed(s, who, draft):
            raise _not_in_library(item_id)
        return LibraryItem.of(draft, await directory.name(s, draft.unit_id), full=True)


async def reprint(rt: Runtime, who: Principal, item_id: str, data: ReprintIn) -> Draft:
    """A new draft of the caller's unit reprinting a library item (转载), attribution kept."""
    who.require(*AUTHORS)
    async with rt.unit_of_work() as s:
        original = await load_for_write(s, item_id, what="item")
        # Not while under embargo, for anyone: a reprint is another unit's draft, without the
        # embargo, which its own people would read (and could push) before publish_at.
        if original.status != "approved" or original.under_embargo(utcnow()):
            raise _not_in_library(item_id)
        if original.is_reprint and original.source:
            source = dict(original.source)
        else:
            name = await directory.name(s, original.unit_id)
            source = {"name": name or original.unit_id, "url": item_url(rt, original.id)}
        draft_id = new_id()
        copies = [Attachment(draft_id=draft_id, kind=a.kind, content_type=a.content_type, size=a.size,
                             sha256=a.sha256, name=a.name, storage_key=a.storage_key, created_by=who.subject)
                  for a in await _attachments_in_order(s, original)]
        fields = {"title": original.title, "subtitle": original.subtitle, "body": original.body,
                  "cover_url": original.cover_url, "category": original.category, "source": source,
                  "targets": data.targets.stored() if data.targets else None}  # None: the unit's own reach
        draft = await new_draft(s, unit_id=who.unit_id, author_id=who.subject, fields=fields, id=draft_id,
                                original_title=original.title, reprint_of=original.id,
                                attachments=[a.meta() for a in copies])
        s.add_all(copies)
        original.reprint_count += 1
        await s.flush()
    return draft


async def _attachments_in_order(s, draft: Draft) -> list[Attachment]:
    """The draft's attachment rows, in the order of its `attachments` list."""
    ids = [a["id"] for a in draft.attachments]
    if not ids:
        return []
    rows = {a.id: a for a in (await s.exec(select(Attachment).where(Attachment.id.in_(ids)))).all()}
    return [rows[i] for i in ids if i in rows]


def item_url(rt: Runtime, item_id: str) -> str:
    base = rt.settings.public_base_url.rstrip("/") or f"http://{rt.settings.http_host}:{rt.settings.http_port}"
    return f"{base}/v1/library/{item_id}"


def _encode_cursor(d: Draft) -> str:
    return base64.urlsafe_b64encode(f"{iso(d.approved_at)}|{d.id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, last_id = raw.split("|", 1)
        return as_utc(datetime.fromisoformat(at.replace("Z", "+00:00"))), last_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("validation_failed", "请求参数不合法",
                      [{"field": "cursor", "problem": "not a cursor of this list", "type": "value_error"}])

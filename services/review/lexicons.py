"""The machine review's lexicons (词库): stored here, versioned, edited by province-level ops,
and reloaded by every replica without a restart.

Storage: each edit (a whole replacement, or terms added to / removed from one category) is a
new row of `lexicon_versions` holding the complete LexiconData JSON, with who, when and what
changed. The first version is the engine's defaults, written at start-up when the table is empty.

Reload: each process keeps one MachineReviewer built from the newest version it knows. It
looks up the newest version number (one indexed read) every REVIEW_LEXICON_POLL_S seconds in
the background and before every check, and rebuilds in a worker thread (asyncio.to_thread),
so the event loop, and every request on it, never waits for a rebuild. A submission after an
edit is therefore always checked with the edited lexicons, on any replica.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import Principal
from govmedia_kit.db import iso, page, utcnow
from govmedia_kit.errors import AppError, conflict, invalid
from govmedia_kit.runtime import Runtime, periodically

from .machine import LexiconData, MachineReviewer, default_lexicons
from .models import LexiconPublic, LexiconVersion, LexiconVersionPublic, TermsIn, trail

log = logging.getLogger(__name__)

SYSTEM = "system"
_STATE = "lexicons"  # rt.state key of this process's LexiconCache
_ETAG = re.compile(r'^(?:W/)?"?(\d{1,12})"?$')


def build_reviewer(data: dict, version: int) -> MachineReviewer:
    """Parse and build (CPU work: call it in a thread). Raises ValueError on bad data."""
    return MachineReviewer(LexiconData.from_json(data), version=str(version))


def _parse(data: Any) -> dict:
    """The engine's own reading of `data`, normalised; bad data → 422 with the engine's message."""
    try:
        return LexiconData.from_json(data).to_json()
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise invalid("invalid_lexicon", f"词库数据不合法：{exc}", {"problem": str(exc)})


class LexiconCache:
    """This process's MachineReviewer and the lexicon version it was built from."""

    def __init__(self) -> None:
        self.version: int | None = None
        self.reviewer: MachineReviewer | None = None
        self._failed: int | None = None  # a stored version this engine could not build (logged)
        self._lock = asyncio.Lock()

    async def reviewer_for(self, s: AsyncSession) -> tuple[MachineReviewer, int]:
        """The reviewer of the newest version `s` sees (rebuilt off the event loop when it changed)."""
        newest = await newest_version(s)
        if newest is None:
            raise AppError(503, "lexicons_missing", "机审词库尚未初始化")
        if self.version != newest and self._failed != newest:
            await self._load(s, newest)
        if self.reviewer is None:
            raise AppError(503, "lexicons_unusable", "机审词库无法加载", {"version": newest})
        return self.reviewer, self.version

    async def install(self, reviewer: MachineReviewer, version: int) -> None:
        async with self._lock:
            if self.version is None or version > self.version:
                self.version, self.reviewer = version, reviewer

    async def _load(self, s: AsyncSession, version: int) -> None:
        async with self._lock:
            if self.version is not None and self.version >= version:
                return  # another task got there first
            row = await s.get(LexiconVersion, version)
            try:
                reviewer = await asyncio.to_thread(build_reviewer, row.data, version)
            except Exception:
                # Keep checking with the last good lexicons rather than checking nothing.
                log.exception("lexicon version %d cannot be built; keeping version %s", version, self.version)
                self._failed = version
                return
            self.version, self.reviewer = version, reviewer
            log.info("machine review now uses lexicon version %d", version)


def cache(rt: Runtime) -> LexiconCache:
    return rt.state.setdefault(_STATE, LexiconCache())


async def newest_version(s: AsyncSession) -> int | None:
    return await s.scalar(select(func.max(LexiconVersion.version)))


# --- start-up and the reload watch ------------------------------------------------------

async def seed(rt: Runtime) -> None:
    """The engine's defaults become version 1 when no version is stored yet."""
    async with rt.db.session() as s:
        if await newest_version(s) is not None:
            return
    data = await asyncio.to_thread(lambda: default_lexicons().to_json())
    try:
        async with rt.unit_of_work() as s:
            if await newest_version(s) is None:
                s.add(LexiconVersion(version=1, data=data, created_by=SYSTEM, change="引擎默认词库"))
    except IntegrityError:
        pass  # another replica seeded it at the same moment


async def watch(rt: Runtime, stop: asyncio.Event) -> None:
    """Notice a new version within REVIEW_LEXICON_POLL_S and rebuild before it is needed."""
    async def refresh() -> None:
        async with rt.db.session() as s:
            await cache(rt).reviewer_for(s)

    await periodically(refresh, rt.settings.lexicon_poll_s, stop, "lexicon reload")


# --- use cases (ops of the province) ---------------------------------------------------

def parse_if_match(value: str | None) -> int | None:
    if value is None or not value.strip():
        return None
    match = _ETAG.match(value.strip())
    if not match:
        raise AppError(400, "invalid_if_match", 'If-Match 须为版本号，例如 "3"', {"if_match": value[:50]})
    return int(match.group(1))


def _public(row: LexiconVersion) -> LexiconPublic:
    return LexiconPublic(version=row.version, data=row.data, created_by=row.created_by,
                         created_at=iso(row.created_at), change=row.change)


async def get_lexicons(rt: Runtime, who: Principal, version: int | None = None) -> LexiconPublic:
    """The newest version (or a given one) with its data: the secrecy terms are in it, so ops only."""
    who.require_province("ops")
    async with rt.db.session() as s:
        number = version if version is not None else await newest_version(s)
        row = await s.get(LexiconVersion, number) if number is not None else None
        if row is None:
            raise AppError(404, "lexicon_version_not_found", "未找到该词库版本", {"version": version})
        return _public(row)


async def list_versions(rt: Runtime, who: Principal, limit: int,
                        cursor: int | None) -> tuple[list[LexiconVersionPublic], int | None]:
    who.require_province("ops")
    stmt = select(LexiconVersion.version, LexiconVersion.created_by, LexiconVersion.created_at,
                  LexiconVersion.change).order_by(LexiconVersion.version.desc()).limit(limit + 1)
    if cursor is not None:
        stmt = stmt.where(LexiconVersion.version < cursor)
    async with rt.db.session() as s:
        rows, nxt = page(list((await s.exec(stmt)).all()), limit, key=lambda r: r.version)
    return [LexiconVersionPublic(version=r.version, created_by=r.created_by, created_at=iso(r.created_at),
                                 change=r.change) for r in rows], nxt


async def put_lexicons(rt: Runtime, who: Principal, if_match: int | None, data: Any,
                       change: str = "") -> LexiconPublic:
    """Replace the whole lexicon data; `if_match` (required) is the version it is based on."""
    who.require_province("ops")
    if if_match is None:
        raise AppError(428, "if_match_required", "修改词库须在 If-Match 中给出所依据的版本号")
    if not isinstance(data, dict):
        raise invalid("invalid_lexicon", "词库数据须为 JSON 对象", {"problem": "not an object"})
    normalised = await asyncio.to_thread(_parse, data)
    return await _store(rt, who, if_match, normalised, change.strip()[:500] or "整体替换")


async def edit_terms(rt: Runtime, who: Principal, data: TermsIn, if_match: int | None = None) -> LexiconPublic:
    """Add and remove terms of one category without sending everything; a new version.
    `if_match` is optional here: without it the edit applies to the newest version."""
    who.require_province("ops")
    if not data.add and not data.remove:
        raise invalid("nothing_to_change", "须给出要增加或删除的词条")
    async with rt.db.session() as s:
        base = await s.get(LexiconVersion, await newest_version(s))
    if if_match is not None and if_match != base.version:
        raise conflict("version_conflict", "词库已被他人修改，请刷新后重试",
                       {"current_version": base.version, "if_match": if_match})
    current = dict(base.data)
    categories = dict(current.get("categories") or {})
    if data.category not in categories:
        raise invalid("unknown_category", "词库中没有该类别",
                      {"category": data.category, "known": sorted(categories)})
    category = dict(categories[data.category])
    terms = dict(category.get("terms") or {})
    missing = [t for t in data.remove if t not in terms]
    if missing:
        raise invalid("term_not_found", "要删除的词条不在该类别中", {"category": data.category, "terms": missing})
    both = sorted(set(data.add) & set(data.remove))
    if both:
        raise invalid("term_added_and_removed", "同一词条不能同时增加和删除", {"terms": both})
    for term in data.remove:
        del terms[term]
    terms.update(data.add)
    category["terms"] = terms
    categories[data.category] = category
    current["categories"] = categories
    normalised = await asyncio.to_thread(_parse, current)
    summary = f"{data.category}: +{len(data.add)} -{len(data.remove)}"
    return await _store(rt, who, base.version, normalised, summary)


async def _store(rt: Runtime, who: Principal, based_on: int, data: dict, change: str) -> LexiconPublic:
    version = based_on + 1
    # Build it now (in a thread): an engine that cannot use the data refuses it here, and this
    # replica starts using the new version at once.
    try:
        reviewer = await asyncio.to_thread(build_reviewer, data, version)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise invalid("invalid_lexicon", f"词库数据不合法：{exc}", {"problem": str(exc)})
    try:
        async with rt.unit_of_work() as s:
            newest = await newest_version(s)
            if newest != based_on:
                raise conflict("version_conflict", "词库已被他人修改，请刷新后重试",
                               {"current_version": newest, "if_match": based_on})
            row = LexiconVersion(version=version, data=data, created_by=who.subject, created_at=utcnow(),
                                 change=change)
            s.add(row)
            await s.flush()
            await trail.append(s, "lexicons", "lexicons_changed", who.subject, {"version": based_on},
                               {"version": version, "change": change}, at=row.created_at)
    except IntegrityError:
        raise conflict("version_conflict", "词库刚被他人修改，请刷新后重试", {"if_match": based_on})
    await cache(rt).install(reviewer, version)
    log.info("lexicon version %d stored by %s (%s)", version, who.subject, change)
    return _public(row)

"""Review chains: which levels an item of a unit passes, who holds each, and how long an urgent
item may wait at each (突发).

A unit without a chain of its own gets the default three levels (LEVEL_ROLES, 30 minutes
each). A chain has at least three levels (三审; fewer is 422 `chain_too_short`); a chain
stored with fewer before that rule is not in force, the default is. Every change is a new version recording who and when; a review copies the chain in
force into its own levels when it opens, so a later change never alters a review in flight.

Who may change a unit's chain: ops of a region that reaches the unit, or the unit's principal.
Everyone of the unit (and ops that reach it) may read it. The last level must be held by
the principal or the editor-in-chief only (they answer for the content overall).
"""
from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import Principal
from govmedia_kit.db import iso, page, utcnow
from govmedia_kit.errors import conflict, forbidden, invalid
from govmedia_kit.runtime import Runtime

from .models import (
    DEFAULT_DEADLINE_MINUTES,
    LAST_LEVEL_ROLES,
    LEVEL_ROLES,
    MIN_LEVELS,
    ChainIn,
    ChainLevelPublic,
    ChainPublic,
    ReviewChain,
    directory,
    trail,
)

CHAIN_EDITORS = ("ops", "principal")


def default_levels() -> list[dict]:
    return [{"roles": list(roles), "deadline_minutes": DEFAULT_DEADLINE_MINUTES} for roles in LEVEL_ROLES.values()]


async def newest(s: AsyncSession, unit_id: str) -> ReviewChain | None:
    return (await s.exec(select(ReviewChain).where(ReviewChain.unit_id == unit_id)
                         .order_by(ReviewChain.version.desc()).limit(1))).first()


def in_force(chain: ReviewChain | None) -> ReviewChain | None:
    """A stored chain is in force only with the three levels of 三审 at least: one stored
    before that rule with fewer is not, and the default chain applies instead."""
    return chain if chain is not None and len(chain.levels) >= MIN_LEVELS else None


async def levels_for(s: AsyncSession, unit_id: str) -> tuple[int, list[dict]]:
    """The chain in force for `unit_id`: (version, [{"roles", "deadline_minutes"}]); version 0 is the default."""
    chain = in_force(await newest(s, unit_id))
    return (chain.version, chain.levels) if chain else (0, default_levels())


def _public(unit_id: str, chain: ReviewChain | None) -> ChainPublic:
    levels = chain.levels if chain else default_levels()
    return ChainPublic(
        unit_id=unit_id, version=chain.version if chain else 0, is_default=chain is None,
        levels=[ChainLevelPublic(level=n, roles=lv["roles"], deadline_minutes=lv["deadline_minutes"])
                for n, lv in enumerate(levels, start=1)],
        changed_by=chain.changed_by if chain else None, changed_at=iso(chain.changed_at) if chain else None)


async def _require_reader(s: AsyncSession, who: Principal, unit_id: str) -> None:
    await directory.require_reach(s, who, unit_id, "ops")


async def _require_editor(s: AsyncSession, who: Principal, unit_id: str) -> None:
    """Ops within its region reach, or the unit's own principal."""
    if who.has("ops"):
        await directory.require_reach(s, who, unit_id, "ops")
        return
    who.require(*CHAIN_EDITORS)
    if who.unit_id != unit_id:
        raise forbidden("other_unit", "只能修改本单位的审核流程")


async def get_chain(rt: Runtime, who: Principal, unit_id: str) -> ChainPublic:
    async with rt.db.session() as s:
        await _require_reader(s, who, unit_id)
        return _public(unit_id, in_force(await newest(s, unit_id)))


async def chain_history(rt: Runtime, who: Principal, unit_id: str, limit: int,
                        cursor: int | None) -> tuple[list[ChainPublic], int | None]:
    """Every version of the unit's chain, newest first (the default, never stored, is not listed)."""
    stmt = select(ReviewChain).where(ReviewChain.unit_id == unit_id).order_by(ReviewChain.version.desc())
    if cursor is not None:
        stmt = stmt.where(ReviewChain.version < cursor)
    async with rt.db.session() as s:
        await _require_reader(s, who, unit_id)
        rows, nxt = page(list((await s.exec(stmt.limit(limit + 1))).all()), limit, key=lambda c: c.version)
    return [_public(unit_id, c) for c in rows], nxt


async def put_chain(rt: Runtime, who: Principal, unit_id: str, data: ChainIn, if_match: int | None) -> ChainPublic:
    """A new version of the unit's chain. `if_match` (optional): the version the change is based
    on (0 = the default), so two people editing at once cannot silently overwrite each other."""
    levels = [{"roles": list(lv.roles), "deadline_minutes": lv.deadline_minutes} for lv in data.levels]
    async with rt.unit_of_work() as s:
        await _require_editor(s, who, unit_id)
        if len(data.levels) < MIN_LEVELS:
            raise invalid("chain_too_short", "审核流程至少须有三级（三审制：科室负责人、分管负责人、主要负责人或总编辑）",
                          {"levels": len(data.levels), "min_levels": MIN_LEVELS})
        last_roles = data.levels[-1].roles
        if not set(last_roles) <= set(LAST_LEVEL_ROLES):
            raise invalid("last_level_not_editor_in_chief", "最后一级审核只能由主要负责人或总编辑担任",
                          {"last_level_roles": list(last_roles), "allowed": list(LAST_LEVEL_ROLES)})
        current = await newest(s, unit_id)
        version = current.version if current else 0
        if if_match is not None and if_match != version:
            raise conflict("version_conflict", "审核流程已被他人修改，请刷新后重试",
                           {"current_version": version, "if_match": if_match})
        chain = ReviewChain(unit_id=unit_id, version=version + 1, levels=levels, changed_by=who.subject,
                            changed_at=utcnow())
        s.add(chain)
        try:
            await s.flush()
        except IntegrityError:
            raise conflict("version_conflict", "审核流程刚被他人修改，请刷新后重试", {"current_version": version})
        await trail.append(s, f"chain:{unit_id}", "chain_changed", who.subject,
                           {"version": version, "levels": current.levels if current else default_levels()},
                           {"version": chain.version, "levels": levels}, at=chain.changed_at)
    return _public(unit_id, chain)

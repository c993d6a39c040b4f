"""The region tree as reach needs it: a region's materialised path, a subtree as a prefix.

Ops, the regulator and the supervisor reach the units of their region's subtree (a city's
regulator keeps the city's ledger, the province's the whole province); everyone else
reaches their own unit. Tokens carry the caller's region path (claim `region`)."""
from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import Principal
from govmedia_kit.directory import reach_filter as kit_reach_filter
from govmedia_kit.errors import invalid

from .models import Region, Unit


async def path_of(s: AsyncSession, region_id: str) -> str:
    path = (await s.exec(select(Region.path).where(Region.id == region_id))).first()
    if path is None:
        raise invalid("region_not_found", "地区不存在", {"region_id": region_id})
    return path


async def unit_path(s: AsyncSession, unit_id: str) -> str | None:
    """The region path of a unit (None: no such unit)."""
    return (await s.exec(select(Region.path).join(Unit, Unit.region_id == Region.id)
                         .where(Unit.id == unit_id))).first()


def regions_within(path: str):
    """The ids of the regions at or below `path` (for `region_id.in_(…)`)."""
    return select(Region.id).where(Region.path.startswith(path, autoescape=True))


async def region_subtree(s: AsyncSession, region_id: str):
    """The region and every region below it (province → city → county → township)."""
    return regions_within(await path_of(s, region_id))


def units_within(path: str):
    """The ids of the units of the regions at or below `path` (for `unit_id.in_(…)`)."""
    return select(Unit.id).where(Unit.region_id.in_(regions_within(path)))


def reach_filter(who: Principal, unit_column, *cross_unit_roles: str):
    """What `who` reads of the rows of `unit_column` (govmedia_kit.directory.reach_filter),
    over the account service's own region tree."""
    return kit_reach_filter(who, unit_column, units_within, *cross_unit_roles)

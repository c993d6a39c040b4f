"""Which region each unit sits in (and its name), as the services other than account need it.

Ops, regulators and supervisors reach the units of their region subtree (issue 3). The
account service owns the region tree and announces every unit with its region's
materialised path ("/<province>/<city>/…/") on `govmedia.account.unit.upserted`; each
other service keeps that mapping in its own `unit_regions` table, so a reach check is a
primary-key read and a list's reach a prefix match, with no call to the account service.
"""
from __future__ import annotations

from typing import Callable

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.sql import Select

from .bus import Consumer
from .db import upsert_insert
from .events import Event

UNIT_UPSERTED = "govmedia.account.unit.upserted"


class UnitDirectory:
    def __init__(self, metadata: MetaData):
        self.table = Table(
            "unit_regions",
            metadata,
            Column("unit_id", String(32), primary_key=True),
            Column("region_path", String(400), nullable=False, index=True),
            Column("name", String(200), nullable=False, server_default=""),  # for attribution and display
        )

    def consumer(self, service: str) -> Consumer:
        return Consumer(f"{service}-unit-directory", UNIT_UPSERTED, self._on_unit_upserted)

    async def _on_unit_upserted(self, rt, session, event: Event) -> None:
        from govmedia.events.v1 import events_pb2 as ev  # generated code; imported where used

        msg = event.parse(ev.UnitUpserted)
        if not msg.region_path:  # from an account service older than region paths: nothing to learn
            return
        values = {"region_path": msg.region_path, "name": msg.name}
        await session.execute(upsert_insert(session, self.table).values(unit_id=msg.unit_id, **values)
                              .on_conflict_do_update(index_elements=["unit_id"], set_=values))

    async def name(self, session, unit_id: str) -> str | None:
        return await session.scalar(select(self.table.c.name).where(self.table.c.unit_id == unit_id))

    async def region_path(self, session, unit_id: str) -> str | None:
        return await session.scalar(select(self.table.c.region_path).where(self.table.c.unit_id == unit_id))

    async def require_reach(self, session, who, unit_id: str, *cross_unit_roles: str) -> None:
        """`who` acts for `unit_id`, or reaches its region with one of `cross_unit_roles`."""
        if who.unit_id != unit_id:
            who.require_unit(unit_id, await self.region_path(session, unit_id), cross_unit_roles=cross_unit_roles)

    def units_within(self, region_path: str) -> Select:
        """The ids of the units in the subtree at `region_path` (for `unit_id.in_(…)`)."""
        return select(self.table.c.unit_id).where(self.table.c.region_path.startswith(region_path, autoescape=True))

    def reach_filter(self, unit_column, who, *cross_unit_roles: str):
        return reach_filter(who, unit_column, self.units_within, *cross_unit_roles)


def reach_filter(who, unit_column, units_within: Callable[[str], Select], *cross_unit_roles: str):
    """A WHERE clause limiting `unit_column` to what `who` reads: their own unit, or with one of
    `cross_unit_roles` the units of their region subtree, as `units_within(region_path)` selects
    them (None: the whole province, no limit)."""
    scope = who.scope(*cross_unit_roles)
    if scope is None:
        return unit_column == who.unit_id
    if scope == "":
        return None
    return (unit_column == who.unit_id) | unit_column.in_(units_within(scope))

"""Who may push to whom: the targets of an item stay within its author unit's reach (issue 16).

A unit reaches its own accounts and those of the units in its region's subtree. A province-level
unit (its region is the province) reaches the whole matrix: `scope: all`, any region, any
account. Any other unit may name:

- regions whose path lies in its own region's subtree (its own region included);
- accounts whose unit's region lies there;
- platforms and unit kinds only together with such regions or accounts (kinds given together
  intersect, dispatch's TargetRule): alone they would select the whole province.

What the directory has not heard of (a region, an account, the author unit itself) is out of
reach for everyone but the province level: the check fails closed. The region and account
paths come from the account service's events (`govmedia.account.region.upserted`, the paths
units and accounts carry, `govmedia.account.account.*`), kept in this service's own tables,
so the check is a few primary-key reads and never a call to another service.

Content checks at every place a target list is accepted or changed (create, edit, reprint, a
draft from a clue) and again at submission; review checks the submitted snapshot before the
last level's approval. The refusal is 403 `target_out_of_reach`, naming what is out of reach,
and changes nothing.
"""
from __future__ import annotations

from typing import Iterable

from sqlalchemy import Column, MetaData, String, Table, select

from .auth import is_province_path
from .bus import Consumer
from .db import upsert_insert
from .errors import AppError
from .events import Event

REGION_UPSERTED = "govmedia.account.region.upserted"
UNIT_UPSERTED = "govmedia.account.unit.upserted"
ACCOUNT_SUBJECTS = "govmedia.account.account.>"
TARGET_KINDS = ("scope", "regions", "accounts", "platforms", "unit_kinds")
ACCOUNT_CHANGES = ("govmedia.account.account.activated", "govmedia.account.account.updated",
                   "govmedia.account.account.closed")


def region_prefixes(path: str) -> list[tuple[str, str]]:
    """Every region a path names with its own path: "/p/c/t/" → (p, "/p/"), (c, "/p/c/"), (t, "/p/c/t/")."""
    parts = [p for p in path.split("/") if p]
    return [(part, "/" + "/".join(parts[:n + 1]) + "/") for n, part in enumerate(parts)]


def out_of_reach(unit_path: str | None, targets: dict, region_paths: dict[str, str | None],
                 account_paths: dict[str, str | None]) -> dict | None:
    """What of `targets` (as content stores them: {"scope": "all"} or lists) lies beyond the
    reach of a unit whose region path is `unit_path`; None when everything is within it.
    `region_paths` / `account_paths`: the known path of each region / account's unit (None: unknown)."""
    if (unit_path and is_province_path(unit_path)) or not any(targets.get(k) for k in TARGET_KINDS):
        return None  # the province reaches everything; no targets reach nobody
    if not unit_path:
        return {"reason": "unit_region_unknown"}
    problems: dict = {}
    if targets.get("scope") == "all":
        problems["scope"] = "all"
    regions = [r for r in targets.get("regions") or () if not (region_paths.get(r) or "").startswith(unit_path)]
    accounts = [a for a in targets.get("accounts") or () if not (account_paths.get(a) or "").startswith(unit_path)]
    if regions:
        problems["regions"] = regions
    if accounts:
        problems["accounts"] = accounts
    bounded = targets.get("regions") or targets.get("accounts")
    if not bounded and (targets.get("platforms") or targets.get("unit_kinds")):
        problems["unbounded"] = [k for k in ("platforms", "unit_kinds") if targets.get(k)]
    if not problems:
        return None
    return {"unit_region": unit_path, **problems}


def out_of_reach_error(details: dict) -> AppError:
    return AppError(403, "target_out_of_reach",
                    "推送范围超出本单位的管辖范围：只能推送到本单位及其所在地区下级单位的账号，全省范围须由省级单位推送",
                    details)


def targets_of_message(t) -> dict:
    """ev.Targets (the snapshot's) as content stores targets."""
    if t.all:
        return {"scope": "all"}
    pick = {"regions": list(t.regions), "platforms": list(t.platforms), "accounts": list(t.accounts),
            "unit_kinds": list(t.unit_kinds)}
    return {k: v for k, v in pick.items() if v}


class TargetReach:
    """The region and account paths a service needs to check targets, fed by account events."""

    def __init__(self, metadata: MetaData, units):
        self.units = units  # the service's UnitDirectory: the author unit's region path
        self.regions = Table(
            "reach_regions", metadata,
            Column("region_id", String(32), primary_key=True),
            Column("path", String(400), nullable=False),
        )
        self.accounts = Table(
            "reach_accounts", metadata,
            Column("account_id", String(32), primary_key=True),
            Column("unit_id", String(32), nullable=False),
            Column("region_path", String(400), nullable=False),
        )

    def consumers(self, service: str) -> list[Consumer]:
        return [
            Consumer(f"{service}-reach-regions", REGION_UPSERTED, self._on_region),
            Consumer(f"{service}-reach-units", UNIT_UPSERTED, self._on_unit),
            Consumer(f"{service}-reach-accounts", ACCOUNT_SUBJECTS, self._on_account),
        ]

    async def _learn_path(self, session, path: str) -> None:
        """A path names every region above and at its end: each is learnt with its own path."""
        for region_id, region_path in region_prefixes(path):
            await session.execute(upsert_insert(session, self.regions).values(region_id=region_id, path=region_path)
                                  .on_conflict_do_nothing(index_elements=["region_id"]))

    async def _on_region(self, rt, session, event: Event) -> None:
        from govmedia.events.v1 import events_pb2 as ev

        msg = event.parse(ev.RegionUpserted)
        if msg.path:
            await self._learn_path(session, msg.path)

    async def _on_unit(self, rt, session, event: Event) -> None:
        from govmedia.events.v1 import events_pb2 as ev

        msg = event.parse(ev.UnitUpserted)
        if msg.region_path:
            await self._learn_path(session, msg.region_path)

    async def _on_account(self, rt, session, event: Event) -> None:
        from govmedia.events.v1 import events_pb2 as ev

        if event.type not in ACCOUNT_CHANGES:  # other payloads share the subject space
            return
        msg = event.parse(ev.AccountChanged)
        if not msg.region_path:
            return
        await self._learn_path(session, msg.region_path)
        values = {"unit_id": msg.unit_id, "region_path": msg.region_path}
        await session.execute(upsert_insert(session, self.accounts).values(account_id=msg.account_id, **values)
                              .on_conflict_do_update(index_elements=["account_id"], set_=values))

    async def own_targets(self, session, unit_id: str) -> dict:
        """The unit's own reach as targets: its region's subtree (the default of reprints and
        drafts from clues). Refused while the directory does not know the unit."""
        path = await self.units.region_path(session, unit_id)
        if not path:
            raise out_of_reach_error({"reason": "unit_region_unknown"})
        return {"regions": [region_prefixes(path)[-1][0]]}

    async def check(self, session, unit_id: str, targets: dict) -> dict | None:
        """What of `targets` is beyond `unit_id`'s reach (None: all within it)."""
        unit_path = await self.units.region_path(session, unit_id)
        if unit_path and is_province_path(unit_path):
            return None
        regions = await self._paths(session, self.regions.c.region_id, self.regions.c.path,
                                    targets.get("regions") or ())
        accounts = await self._paths(session, self.accounts.c.account_id, self.accounts.c.region_path,
                                     targets.get("accounts") or ())
        return out_of_reach(unit_path, targets, regions, accounts)

    async def require_within(self, session, unit_id: str, targets: dict) -> None:
        problems = await self.check(session, unit_id, targets)
        if problems:
            raise out_of_reach_error(problems)

    @staticmethod
    async def _paths(session, key, value, ids: Iterable[str]) -> dict[str, str]:
        ids = list(dict.fromkeys(ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), 1000):  # IN lists of bounded length
            chunk = ids[start:start + 1000]
            found.update((await session.execute(select(key, value).where(key.in_(chunk)))).all())
        return found

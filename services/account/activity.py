"""Account activity (issue 3): when each account last published, how many items it published
per month, and the daily watch for sleeping accounts (睡眠账号).

Dispatch announces acknowledged deliveries (govmedia.dispatch.deliveries.acknowledged); an
acknowledged publish is a publication on the account. The watch counts calendar days
(Asia/Shanghai) since the last publication — or, for an account that never published here,
since it was opened or entered the ledger, whichever is later (the platform cannot know what
an existing account published before it was registered) — and climbs one county's ladder:
10 days warn the editor-in-chief, 12 the principal, 14 flag the account dormant. Each step
is announced once per silence (govmedia.account.activity.dormancy); a new publication clears
the flag and the steps. Dormancy is a flag, not a lifecycle state: closing stays a decision.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from govmedia.events.v1 import events_pb2 as ev
from sqlalchemy import func, literal, select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import CurrentPrincipal, Principal
from govmedia_kit.bus import Consumer, Event
from govmedia_kit.db import as_utc, iso, page, upsert_insert, utcnow
from govmedia_kit.errors import not_found
from govmedia_kit.runtime import Runtime, RuntimeDep, periodically
from govmedia_kit.workdays import SHANGHAI, local_date

from .accounts import READERS
from .activity_models import (
    STAGE_ORDER,
    STAGES,
    AccountActivity,
    ActivityPublic,
    DormantEntry,
    MonthCount,
    PublishedItem,
)
from .notices import notify
from .regions import path_of, reach_filter, region_subtree
from .models import Account, Page

log = logging.getLogger(__name__)

ACKNOWLEDGED_SUBJECT = "govmedia.dispatch.deliveries.acknowledged"
# Not under govmedia.account.account.>: dispatch reads every subject there as AccountChanged.
DORMANCY_SUBJECT = "govmedia.account.activity.dormancy"
WATCHED = ("active",)  # only accounts in service are expected to publish
MONTHS = 12

T = AccountActivity.__table__
P = PublishedItem.__table__
A = Account.__table__


def now(rt: Runtime) -> datetime:
    """The watch's "now": ACCOUNT_ACTIVITY_CLOCK_OFFSET_DAYS moves it, for tests and drills."""
    return utcnow() + timedelta(days=rt.settings.activity_clock_offset_days)


def _parse_time(value: str, fallback: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# --- the consumer of dispatch's acknowledgements -------------------------------------------

async def on_deliveries_acknowledged(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """Runs in the inbox transaction. Applying the same publications twice changes nothing:
    the last publication is a maximum and each (account, item) is stored once."""
    msg = event.parse(ev.DeliveriesAcknowledged)
    fallback = _parse_time(event.time, utcnow()) if event.time else utcnow()
    items: dict[tuple[str, str], datetime] = {}
    latest: dict[str, tuple[datetime, str]] = {}
    for d in msg.deliveries:
        if d.kind != "publish" or not d.account_id or not d.item_id:
            continue
        at = _parse_time(d.acknowledged_at, fallback) if d.acknowledged_at else fallback
        key = (d.account_id, d.item_id)
        items[key] = min(at, items.get(key, at))
        if d.account_id not in latest or at > latest[d.account_id][0]:
            latest[d.account_id] = (at, d.item_id)
    if not items:
        return
    # Each item counts in the month of its first acknowledged publish (a late copy of an
    # earlier acknowledgement moves it back).
    rows = [{"account_id": a, "item_id": i, "month": local_date(at).strftime("%Y-%m"), "first_published_at": at}
            for (a, i), at in sorted(items.items())]
    ins = upsert_insert(s, P)
    await s.execute(ins.on_conflict_do_update(
        index_elements=["account_id", "item_id"],
        set_={"month": ins.excluded.month, "first_published_at": ins.excluded.first_published_at},
        where=ins.excluded.first_published_at < P.c.first_published_at,
    ), rows)
    # The last publication: rows first (so concurrent writers meet on a row), then the maximum.
    stamp = utcnow()
    await s.execute(upsert_insert(s, T).on_conflict_do_nothing(index_elements=["account_id"]),
                    [{"account_id": a, "dormant": False, "updated_at": stamp} for a in sorted(latest)])
    stmt = select(AccountActivity).where(AccountActivity.account_id.in_(sorted(latest)))
    if s.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    for row in (await s.execute(stmt)).scalars().all():
        at, item_id = latest[row.account_id]
        last = as_utc(row.last_published_at)
        if last is not None and at <= last:
            continue  # an older acknowledgement arriving late: the silence is what it was
        row.last_published_at, row.last_item_id, row.updated_at = at, item_id, stamp
        if row.stage is not None or row.dormant:
            log.info("account %s publishes again: dormancy cleared", row.account_id)
        row.stage = row.stage_at = row.dormant_since = None
        row.dormant = False
        s.add(row)


CONSUMERS: list[Consumer] = [
    Consumer("account-deliveries-acknowledged", ACKNOWLEDGED_SUBJECT, on_deliveries_acknowledged),
]


# --- the daily watch -------------------------------------------------------------------------

def _silence_start(last_published_at: datetime | None, opened_on: date | None, created_at: datetime) -> datetime:
    """What the silence counts from: the last publication, else the later of opening and
    entering the ledger."""
    if last_published_at is not None:
        return as_utc(last_published_at)
    start = as_utc(created_at)
    if opened_on is not None:
        opened = datetime.combine(opened_on, time(0), SHANGHAI).astimezone(timezone.utc)
        start = max(start, opened)
    return start


def silent_days(since: datetime, at: datetime) -> int:
    """Whole calendar days in Asia/Shanghai: published on the 1st, silent 10 days on the 11th."""
    return max((local_date(at) - local_date(since)).days, 0)


def _due_stage(days: int) -> int:
    """Index of the highest step of the ladder reached after `days` silent days (-1: none)."""
    reached = -1
    for i, (_, threshold) in enumerate(STAGES):
        if days >= threshold:
            reached = i
    return reached


async def check_dormancy(rt: Runtime, at: datetime | None = None) -> list[tuple[str, str]]:
    """One pass over the watched accounts; returns the (account, step) announced. A step
    skipped because the watch did not run (or the account came in long silent) is announced
    on the way up, so every person on the ladder hears of it."""
    at = at or now(rt)
    announced: list[tuple[str, str]] = []
    async with rt.unit_of_work() as s:
        stamp = utcnow()
        # A row for every watched account, so the update below can compare and set on it.
        await s.execute(upsert_insert(s, T).from_select(
            ["account_id", "dormant", "updated_at"],
            select(A.c.id, literal(False), literal(stamp, type_=T.c.updated_at.type))
            .where(A.c.status.in_(WATCHED)),
        ).on_conflict_do_nothing(index_elements=["account_id"]))
        rows = (await s.execute(
            select(A.c.id, A.c.unit_id, A.c.name, A.c.opened_on, A.c.created_at, T.c.last_published_at, T.c.stage)
            .join(T, T.c.account_id == A.c.id).where(A.c.status.in_(WATCHED)))).all()
        for r in rows:
            since = _silence_start(r.last_published_at, r.opened_on, r.created_at)
            days = silent_days(since, at)
            due, current = _due_stage(days), STAGE_ORDER.get(r.stage, -1) if r.stage else -1
            if due <= current:
                continue
            name = STAGES[due][0]
            values = {"stage": name, "stage_at": at, "updated_at": stamp}
            if name == "dormant":
                values.update(dormant=True, dormant_since=at)
            # Compare and set: a publication committed meanwhile wins over the watch.
            res = await s.execute(update(T).where(
                T.c.account_id == r.id,
                T.c.last_published_at.is_not_distinct_from(r.last_published_at),
                T.c.stage.is_not_distinct_from(r.stage)).values(**values))
            if res.rowcount != 1:
                continue
            for step in range(current + 1, due + 1):
                await rt.outbox.emit(s, DORMANCY_SUBJECT, ev.AccountDormancy(
                    account_id=r.id, unit_id=r.unit_id, stage=STAGES[step][0], silent_days=days,
                    last_published_at=iso(r.last_published_at) or ""), r.id)
                await _tell(s, r, STAGES[step][0], days, since)
                announced.append((r.id, STAGES[step][0]))
    if announced:
        log.warning("dormancy watch: %d steps announced", len(announced))
    return announced


async def _tell(s: AsyncSession, account, stage: str, days: int, silent_since: datetime) -> None:
    """The step's notice: the editor-in-chief at 10 days, the principal at 12; at 14 both, and
    the regulator of the region. One per step and silence."""
    who, unit_roles, region_roles = {
        "warn_chief_editor": ("请总编辑督促更新", ("chief_editor",), ()),
        "warn_principal": ("请主要负责人督促更新", ("principal",), ()),
        "dormant": ("已标记为长期未更新", ("principal", "chief_editor"), ("regulator",)),
    }[stage]
    await notify(
        s, f"dormancy.{stage}", f"{account.id}@{local_date(silent_since).isoformat()}", account.unit_id,
        f"账号“{account.name}”已{days}天未更新", f"账号“{account.name}”已连续{days}天未更新，{who}。"
        "国家检查对两周内未更新的政务新媒体单项否决；满14天的账号标记为长期未更新。",
        unit_roles=unit_roles, region_roles=region_roles, account_id=account.id)


async def worker(rt: Runtime, stop: asyncio.Event) -> None:
    """Checks at start-up and then every `activity_check_interval_s` (an hour by default: a
    step is due by the day, so an hourly pass announces it the morning it falls due)."""
    await periodically(lambda: check_dormancy(rt), rt.settings.activity_check_interval_s, stop, "dormancy watch")


# --- reading ---------------------------------------------------------------------------------

def _months(today: date, n: int = MONTHS) -> list[str]:
    """The last `n` months, oldest first, ending with the current one."""
    y, m, out = today.year, today.month, []
    for _ in range(n):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


async def get_activity(rt: Runtime, who: Principal, account_id: str) -> ActivityPublic:
    at = now(rt)
    months = _months(local_date(at))
    async with rt.db.session() as s:
        account = await s.get(Account, account_id)
        if account is None:
            raise not_found("account", account_id)
        who.require_unit(account.unit_id, await path_of(s, account.region_id), cross_unit_roles=READERS)
        row = await s.get(AccountActivity, account_id)
        counts = dict((await s.execute(
            select(P.c.month, func.count()).where(P.c.account_id == account_id, P.c.month >= months[0])
            .group_by(P.c.month))).all())
    last = row.last_published_at if row else None
    since = _silence_start(last, account.opened_on, account.created_at)
    return ActivityPublic(
        account_id=account.id, unit_id=account.unit_id, status=account.status, last_published_at=iso(last),
        silent_since=iso(since), silent_days=silent_days(since, at),
        stage=row.stage if row else None, dormant=bool(row and row.dormant),
        dormant_since=iso(row.dormant_since) if row else None,
        monthly=[MonthCount(month=m, items=counts.get(m, 0)) for m in months],
    )


async def list_dormant(rt: Runtime, who: Principal, limit: int, cursor: str | None, stage: str | None = None,
                       region_id: str | None = None, unit_id: str | None = None
                       ) -> tuple[list[DormantEntry], str | None]:
    """Watched accounts on the ladder (warned or dormant), for the regulator, supervisor and
    ops of their region subtree."""
    who.require(*READERS)
    at = now(rt)
    stmt = (select(Account, AccountActivity).join(AccountActivity, AccountActivity.account_id == Account.id)
            .where(AccountActivity.stage.is_not(None), Account.status.in_(WATCHED))
            .order_by(Account.id).limit(limit + 1))
    if cursor:
        stmt = stmt.where(Account.id > cursor)
    if stage:
        stmt = stmt.where(AccountActivity.stage == stage)
    if unit_id:
        stmt = stmt.where(Account.unit_id == unit_id)
    reach = reach_filter(who, Account.unit_id, *READERS)
    if reach is not None:
        stmt = stmt.where(reach)
    async with rt.db.session() as s:
        if region_id:
            stmt = stmt.where(Account.region_id.in_(await region_subtree(s, region_id)))
        rows, nxt = page(list((await s.exec(stmt)).all()), limit, key=lambda r: r[0].id)
    return [DormantEntry(
        account_id=a.id, unit_id=a.unit_id, region_id=a.region_id, platform=a.platform, name=a.name, stage=act.stage,
        silent_days=silent_days(_silence_start(act.last_published_at, a.opened_on, a.created_at), at),
        last_published_at=iso(act.last_published_at), dormant=act.dormant, dormant_since=iso(act.dormant_since),
        stage_at=iso(act.stage_at)) for a, act in rows], nxt


# --- REST ------------------------------------------------------------------------------------

router = APIRouter()
Limit = Annotated[int, Query(ge=1, le=200)]
Stage = Literal["warn_chief_editor", "warn_principal", "dormant"]


@router.get("/v1/accounts/{account_id}/activity", response_model=ActivityPublic, tags=["activity"])
async def account_activity(rt: RuntimeDep, who: CurrentPrincipal, account_id: str):
    """Last publication, days of silence, the dormancy step and 12 months of item counts
    (the account's unit, or the regulator, supervisor and ops)."""
    return await get_activity(rt, who, account_id)


@router.get("/v1/activity/dormant", response_model=Page, tags=["activity"])
async def dormant_accounts(rt: RuntimeDep, who: CurrentPrincipal, limit: Limit = 50, cursor: str | None = None,
                           stage: Stage | None = None, region: str | None = None, unit: str | None = None):
    """Warned and dormant accounts (regulator, supervisor, ops); `region` means its subtree."""
    items, nxt = await list_dormant(rt, who, limit, cursor, stage, region, unit)
    return Page(items=items, next_cursor=nxt)

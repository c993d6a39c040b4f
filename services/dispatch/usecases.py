"""Dispatch use cases: event handlers, the client feed and acknowledgements, and the views
of a publication and a retraction. REST and gRPC call these same functions."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from sqlalchemy import select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.bus import Event
from govmedia_kit.db import iso, new_id, utcnow
from govmedia_kit.errors import AppError, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime

from . import store
from .domain import TargetRule, render
from .models import (
    ACKNOWLEDGED, EVENT_TYPES, FAILED, KILL, PENDING, PUBLISH, Account, Counts, Delivery, EndpointPublic,
    FeedEvent, Publication, PublicationPublic, Region, Retraction, RetractionPublic, Straggler, directory,
)

log = logging.getLogger(__name__)

# Who may watch any publication or retraction; everyone else only their own unit's.
OVERSEERS = ("ops", "regulator", "supervisor")
GONE_ERROR = "endpoint gone (410)"


def signal(rt: Runtime) -> store.Signal:
    return rt.state["signal"]


# --- read models from the account service -------------------------------------------------

async def on_region_upserted(rt: Runtime, s: AsyncSession, event: Event) -> None:
    msg = event.parse(ev.RegionUpserted)
    await s.merge(Region(id=msg.region_id, name=msg.name, parent_id=msg.parent_id or None, level=msg.level))


ACCOUNT_CHANGES = ("govmedia.account.account.activated", "govmedia.account.account.updated",
                   "govmedia.account.account.closed")


async def on_account_changed(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """Upsert the account; a new webhook URL revives an endpoint that had answered 410.
    Other events under govmedia.account.account.> carry other payloads: not ours."""
    if event.type not in ACCOUNT_CHANGES:
        return
    msg = event.parse(ev.AccountChanged)
    account = await s.get(Account, msg.account_id)
    if account is None:
        account = Account(id=msg.account_id, unit_id=msg.unit_id, region_id=msg.region_id, platform=msg.platform,
                          delivery_mode=msg.delivery_mode)
        s.add(account)
    elif (msg.webhook_url or None) != account.webhook_url:
        account.endpoint_active, account.gone_at = True, None
    account.unit_id, account.region_id, account.platform = msg.unit_id, msg.region_id, msg.platform
    account.unit_kind, account.status, account.delivery_mode = msg.unit_kind, msg.status or "active", msg.delivery_mode
    account.webhook_url, account.webhook_secret = msg.webhook_url or None, msg.webhook_secret or None
    account.updated_at = utcnow()


# --- one-key push -------------------------------------------------------------------------

def _delivery_rows(item_id: str, version: int, kind: str, targets, now) -> list[dict]:
    rows = []
    for account_id, mode, active in targets:
        rows.append(dict(
            id=new_id(), item_id=item_id, version=version, account_id=account_id, kind=kind, mode=mode,
            state=PENDING if active else FAILED, attempts=0, last_error=None if active else GONE_ERROR,
            gone=not active, next_attempt_at=now, created_at=now, updated_at=now,
            failed_at=None if active else now,
        ))
    return rows


async def on_item_approved(rt: Runtime, s: AsyncSession, event: Event) -> None:
    approved = event.parse(ev.ItemApproved)
    if not approved.item.item_id:
        log.warning("approval %s without an item: ignored", event.id)
        return
    await publish(rt, s, approved)


async def on_announcement(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """A notice of the account service to one account (e.g. before it is closed), pushed like
    an approved item: the principal's approval of the closing is its review."""
    msg = event.parse(ev.AccountAnnouncement)
    item = ev.ItemSnapshot(item_id=msg.item_id, version=1, unit_id=msg.unit_id, title=msg.title, body=msg.body,
                           category="announcement", targets=ev.Targets(accounts=[msg.account_id]))
    await publish(rt, s, ev.ItemApproved(item=item))


async def publish(rt: Runtime, s: AsyncSession, approved: ev.ItemApproved) -> None:
    """A publication with one publish per targeted account, in one bulk insert. An item
    retracted before (the kill may overtake the approval) is recorded and never sent."""
    item = approved.item
    await store.lock_seq(s)
    pub = await s.get(Publication, item.item_id)
    if pub is not None and pub.version >= item.version:
        return  # this approval again (another event id), or an older version arriving late
    now = utcnow()
    t = item.targets
    spec = {"all": t.all, "regions": list(t.regions), "platforms": list(t.platforms), "accounts": list(t.accounts)}
    payload = {"title": item.title, "subtitle": item.subtitle, "body": item.body, "cover_url": item.cover_url,
               "category": item.category, "author_id": item.author_id, "review_id": approved.review_id}
    if item.HasField("source") and item.source.name:
        payload["source"] = {"name": item.source.name, "url": item.source.url}
    if pub is None:
        pub = Publication(item_id=item.item_id, version=item.version, created_at=now)
        s.add(pub)
    else:
        await store.cancel_pending_publishes(s, now, item.item_id, below_version=item.version)  # superseded
    pub.version, pub.unit_id, pub.targets_spec, pub.payload, pub.updated_at = (
        item.version, item.unit_id, spec, payload, now)
    if await s.get(Retraction, item.item_id) is not None:
        pub.suppressed, pub.target_count = True, 0
        log.info("item %s approved after its retraction: not delivered", item.item_id)
        return
    targets = await store.resolve_targets(s, TargetRule.of(spec))
    pub.target_count = len(targets)
    await store.insert_deliveries(s, _delivery_rows(item.item_id, item.version, PUBLISH, targets, now))
    store.notify_after_commit(s, signal(rt))


# --- one-key retraction -------------------------------------------------------------------

async def on_item_retracted(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """Cancel what was not sent, and send a kill to every account the item went or was
    going to. Without a publication yet, the record alone suppresses a later approval."""
    msg = event.parse(ev.ItemRetracted)
    if not msg.item_id:
        log.warning("retraction %s without an item: ignored", event.id)
        return
    await store.lock_seq(s)
    if await s.get(Retraction, msg.item_id) is not None:
        return  # retracted already: a kill is final
    now = utcnow()
    pub = await s.get(Publication, msg.item_id)
    retraction = Retraction(item_id=msg.item_id, version=msg.version, unit_id=msg.unit_id or (pub.unit_id if pub else ""),
                            reason=msg.reason, retracted_by=msg.retracted_by, started_at=now)
    s.add(retraction)
    await store.cancel_pending_publishes(s, now, msg.item_id)
    if pub is not None:
        targets = await store.publish_targets(s, msg.item_id)
        retraction.target_count = len(targets)
        await store.insert_deliveries(s, _delivery_rows(msg.item_id, pub.version, KILL, targets, now))
    await s.flush()
    await complete_if_done(rt, s, [msg.item_id])
    store.notify_after_commit(s, signal(rt))


async def complete_if_done(rt: Runtime, s: AsyncSession, item_ids) -> None:
    """Close each retraction whose kills are all confirmed (acknowledged, or the client is
    gone), and announce it once."""
    item_ids = sorted(set(item_ids))
    if not item_ids:
        return
    await store.lock_items(s, item_ids)
    open_ones = (await s.execute(select(Retraction).where(Retraction.item_id.in_(item_ids),
                                                          Retraction.completed_at.is_(None)))).scalars().all()
    for r in open_ones:
        rows = await store.kills(s, r.item_id)
        confirmed = sum(1 for k in rows if _confirmed(k))
        if confirmed < len(rows):
            continue
        now = utcnow()
        res = await s.execute(update(Retraction).where(Retraction.item_id == r.item_id,
                                                       Retraction.completed_at.is_(None)).values(completed_at=now))
        if res.rowcount == 1:
            await rt.outbox.emit(s, "govmedia.dispatch.retraction.completed", ev.RetractionCompleted(
                item_id=r.item_id, targets=len(rows), confirmed=confirmed, started_at=iso(r.started_at),
                completed_at=iso(now)), r.item_id)


def _confirmed(kill) -> bool:
    return kill.state == ACKNOWLEDGED or (kill.state == FAILED and kill.gone)


# --- the client feed ------------------------------------------------------------------------

def client_account(who: Principal) -> str:
    if not who.has(CLIENT_ROLE) or not who.account_id:
        raise forbidden("client_required", "仅矩阵客户端（客户端凭据）可以使用此接口")
    return who.account_id


async def open_feed(rt: Runtime, who: Principal, cursor: int, idle_beat: float | None = None,
                    lifetime: float | None = None) -> AsyncIterator[list[FeedEvent]]:
    """Check the caller before anything is streamed, then hand back its feed (ending after
    `lifetime` seconds, if given, once what was sent is recorded)."""
    account_id = client_account(who)
    if cursor < 0:
        raise invalid("invalid_cursor", "游标不能为负数", {"cursor": cursor})
    until = time.monotonic() + lifetime if lifetime else None
    return _feed(rt, account_id, await _platform(rt, account_id), cursor, idle_beat, until)


async def _feed(rt: Runtime, account_id: str, platform: str, cursor: int, idle_beat: float | None,
                until: float | None) -> AsyncIterator[list[FeedEvent]]:
    """The events of one client: every open kill first, then what follows `cursor` in seq
    order, then new ones as they commit. Yields batches (an empty one after `idle_beat`
    seconds of quiet, for keep-alives); what was yielded is marked delivered when the
    transport asks for more, i.e. once it has been written to the connection."""
    limit = rt.settings.stream_batch
    sent: set[str] = set()
    pubs: dict[str, dict] = {}
    kills_phase = True
    last = max(cursor, 0)
    quiet = 0.0
    while until is None or time.monotonic() < until:
        waiter = signal(rt).waiter()
        async with rt.db.session() as s:
            if kills_phase:
                rows = fetched = await store.stream_batch(s, account_id, after=None, kills_only=True, limit=100_000)
            else:
                fetched = await store.stream_batch(s, account_id, after=last, kills_only=False, limit=limit)
                rows = [r for r in fetched if r.id not in sent]  # kills of the first phase go once
                if fetched:
                    last = fetched[-1].seq
            missing = {r.item_id for r in rows} - pubs.keys()
            if missing:
                found = (await s.execute(select(Publication.item_id, Publication.payload)
                                         .where(Publication.item_id.in_(missing)))).all()
                pubs.update({i: p for i, p in found})
        if rows:
            quiet = 0.0
            yield [_feed_event(r, account_id, platform, pubs.get(r.item_id, {})) for r in rows]
            if kills_phase:
                sent.update(r.id for r in rows)
            async with rt.db.transaction() as s:
                await store.mark_delivered(s, [r.id for r in rows], utcnow())
        if kills_phase or fetched:
            kills_phase = False
            continue
        if rt.stop_event.is_set():
            return  # shutting down: the client resumes from its cursor elsewhere
        timeout = rt.settings.poll_interval_s
        if until is not None:
            timeout = max(min(timeout, until - time.monotonic()), 0.0)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except asyncio.TimeoutError:
            quiet += timeout
            if idle_beat is not None and quiet >= idle_beat:
                quiet = 0.0
                yield []


async def _platform(rt: Runtime, account_id: str) -> str:
    async with rt.db.session() as s:
        account = await s.get(Account, account_id)
    return account.platform if account else ""


def _feed_event(row, account_id: str, platform: str, payload: dict) -> FeedEvent:
    data = render(row.kind, platform, payload, item_id=row.item_id, version=row.version, account_id=account_id)
    return FeedEvent(seq=row.seq, event_id=row.id, type=EVENT_TYPES[row.kind], item_id=row.item_id,
                     version=row.version, title=data.get("title", ""), body=data.get("body", ""),
                     delivery_id=row.id, time=iso(row.created_at) or "")


async def ack(rt: Runtime, who: Principal, delivery_ids: list[str]) -> int:
    """A client confirms deliveries (its own only); acknowledged kills may finish a retraction."""
    account_id = client_account(who)
    ids = list(dict.fromkeys(delivery_ids))
    async with rt.unit_of_work() as s:
        rows = (await s.execute(select(Delivery.id, Delivery.account_id, Delivery.item_id, Delivery.kind)
                                .where(Delivery.id.in_(ids)))).all()
        found = {r.id for r in rows}
        if len(found) != len(ids):
            raise AppError(404, "delivery_not_found", "未找到投递记录", {"ids": [i for i in ids if i not in found][:20]})
        if any(r.account_id != account_id for r in rows):
            raise forbidden("other_account", "只能确认本账号的投递")
        now = utcnow()
        acked = await store.mark_acknowledged(s, ids, now)
        await announce_acknowledged(rt, s, acked, now)
        await complete_if_done(rt, s, [r.item_id for r in rows if r.kind == KILL])
    return len(acked)


ACKNOWLEDGED_SUBJECT = "govmedia.dispatch.deliveries.acknowledged"


async def announce_acknowledged(rt: Runtime, s: AsyncSession, rows, now) -> None:
    """One event per batch, in the acknowledging transaction: the account service learns from
    it when each account last published (kills ride along with their kind for other readers)."""
    if not rows:
        return
    at = iso(now)
    accounts = {r.account_id for r in rows}
    about = next(iter(accounts)) if len(accounts) == 1 else rows[0].id
    await rt.outbox.emit(s, ACKNOWLEDGED_SUBJECT, ev.DeliveriesAcknowledged(deliveries=[
        ev.AcknowledgedDelivery(delivery_id=r.id, account_id=r.account_id, item_id=r.item_id, version=r.version,
                                kind=r.kind, acknowledged_at=at) for r in rows]), about)


# --- views ------------------------------------------------------------------------------

async def _may_watch(s: AsyncSession, who: Principal, unit_id: str) -> None:
    if who.has(CLIENT_ROLE):
        who.require(*OVERSEERS)  # a matrix client never reads the dispatch reports
    await directory.require_reach(s, who, unit_id, *OVERSEERS)


async def get_publication(rt: Runtime, who: Principal, item_id: str) -> PublicationPublic:
    async with rt.db.session() as s:
        pub = await s.get(Publication, item_id)
        if pub is None:
            raise not_found("publication", item_id)
        await _may_watch(s, who, pub.unit_id)
        counts = await store.publish_counts(s, item_id, pub.version)
        retracted = await s.get(Retraction, item_id) is not None
    return PublicationPublic(item_id=item_id, version=pub.version, targets=pub.target_count, counts=Counts(**counts),
                             retracted=retracted, created_at=iso(pub.created_at))


async def get_retraction(rt: Runtime, who: Principal, item_id: str) -> RetractionPublic:
    async with rt.db.session() as s:
        r = await s.get(Retraction, item_id)
        if r is None:
            raise not_found("retraction", item_id)
        await _may_watch(s, who, r.unit_id)
        rows = await store.kills(s, item_id)
    confirmed = [k for k in rows if _confirmed(k)]
    return RetractionPublic(
        item_id=item_id, reason=r.reason, targets=len(rows), confirmed=len(confirmed),
        outstanding=len(rows) - len(confirmed),
        stragglers=[Straggler(account_id=k.account_id, state=k.state, attempts=k.attempts, last_error=k.last_error)
                    for k in rows if not _confirmed(k)],
        gone=[k.account_id for k in confirmed if k.gone],
        started_at=iso(r.started_at), completed_at=iso(r.completed_at),
    )


async def get_endpoint(rt: Runtime, who: Principal, account_id: str) -> EndpointPublic:
    """What dispatch knows of an account: whether it is reached, and whether it is gone."""
    async with rt.db.session() as s:
        a = await s.get(Account, account_id)
        if a is None:
            raise not_found("account", account_id)
        if who.account_id and who.account_id != a.id:
            raise forbidden("other_account", "客户端只能查看自己的账号")
        if not who.account_id:
            await directory.require_reach(s, who, a.unit_id, *OVERSEERS)
    return EndpointPublic(account_id=a.id, unit_id=a.unit_id, platform=a.platform, status=a.status,
                          delivery_mode=a.delivery_mode, endpoint_active=a.endpoint_active, gone_at=iso(a.gone_at))

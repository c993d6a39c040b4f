"""Dispatch use cases: the read models, the one-key push and the one-key retraction, and
the views of a publication, a retraction and an endpoint. REST and gRPC call these same
functions; the client feed is in feed.py, deliveries (history, dead letters, resend) in
deliveries.py, client metrics in metrics.py, the stragglers' watch in watch.py."""
from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.bus import Event
from govmedia_kit.db import as_utc, iso, new_id, utcnow
from govmedia_kit.errors import forbidden, not_found
from govmedia_kit.runtime import Runtime
from govmedia_kit.trace_context import continued, current_traceparent

from . import store
from .fanout import created_for_nats, fanout
from .domain import (
    EndpointGate, RenderError, TargetRule, endpoint_key, parse_publish_at, partition_targets, render,
    render_failures, render_publish,
)
from .models import (
    FAILED, KILL, PENDING, PUBLISH, Account, Counts, EndpointPublic, Publication, PublicationPublic, Region,
    Retraction, RetractionPublic, Straggler, directory,
)

log = logging.getLogger(__name__)

# Who may watch any publication or retraction; everyone else only their own unit's.
OVERSEERS = ("ops", "regulator", "supervisor")
GONE_ERROR = "endpoint gone (410)"
STRAGGLER_PAGE = 200  # stragglers per GET /v1/retractions page
GONE_LISTED = 1000  # gone accounts named in a retraction report (all of them are counted as confirmed)


def signal(rt: Runtime) -> store.Signal:
    return rt.state["signal"]


def gate(rt: Runtime) -> EndpointGate:
    return rt.state["gate"]


def contents(rt: Runtime) -> "Contents":
    return rt.state["contents"]


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
    account.region_path = msg.region_path
    account.unit_kind, account.status, account.delivery_mode = msg.unit_kind, msg.status or "active", msg.delivery_mode
    account.webhook_url, account.webhook_secret = msg.webhook_url or None, msg.webhook_secret or None
    account.endpoint_key = endpoint_key(account.webhook_url)
    account.updated_at = utcnow()


# --- what clients are sent: payloads and renderings, memoised --------------------------------

class Contents:
    """Payloads and kill reasons of items as the webhook worker and the streams render them,
    memoised for the process (least recently used out): at 10,000 clients one push is read
    and rendered once per platform, not once per connection. Keyed by (item, version): an
    approved version never changes, and a retraction's reason is final."""

    def __init__(self, size: int = 256):
        self.size = size
        self._payloads: OrderedDict[tuple[str, int], dict] = OrderedDict()
        self._reasons: OrderedDict[str, str] = OrderedDict()
        self._renders: OrderedDict[tuple[str, int, str], dict | RenderError] = OrderedDict()

    def _put(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > self.size:
            cache.popitem(last=False)

    async def load(self, s: AsyncSession, rows) -> None:
        """Read what `rows` (item_id, version, kind) need and is not held yet: two queries at most."""
        want_payload = {(r.item_id, r.version) for r in rows if r.kind == PUBLISH} - self._payloads.keys()
        want_reason = {r.item_id for r in rows if r.kind == KILL} - self._reasons.keys()
        if want_payload:
            items = {i for i, _ in want_payload}
            found = {i: p for i, p in (await s.execute(
                select(Publication.item_id, Publication.payload).where(Publication.item_id.in_(items)))).all()}
            # An older version than the publication's holds the newest payload (older ones are not kept).
            for key in want_payload:
                if key[0] in found:
                    self._put(self._payloads, key, found[key[0]])
        if want_reason:
            for item_id, reason in (await s.execute(select(Retraction.item_id, Retraction.reason)
                                                    .where(Retraction.item_id.in_(want_reason)))).all():
                self._put(self._reasons, item_id, reason)

    def data(self, row, platform: str, account_id: str) -> dict:
        """The CloudEvent `data` of one delivery (RenderError if the item cannot take the form)."""
        if row.kind == KILL:
            return render(KILL, platform, {}, item_id=row.item_id, version=row.version, account_id=account_id,
                          reason=self._reasons.get(row.item_id, ""))
        key = (row.item_id, row.version, platform)
        rendered = self._renders.get(key)
        if rendered is None:
            try:
                rendered = render_publish(platform, self._payloads.get((row.item_id, row.version), {}))
            except RenderError as exc:
                rendered = exc
            if (row.item_id, row.version) in self._payloads:
                self._put(self._renders, key, rendered)
        if isinstance(rendered, RenderError):
            raise rendered
        return render(PUBLISH, platform, {}, item_id=row.item_id, version=row.version, account_id=account_id,
                      rendered=rendered)


# --- one-key push -------------------------------------------------------------------------

def _delivery_rows(targets) -> list[dict]:
    """targets: (account id, mode, endpoint active, render error or None) → the rows of
    store.insert_deliveries: pending, or failed at once (endpoint gone, rendering refused)."""
    rows = []
    for account_id, mode, active, error in targets:
        failed = not active or bool(error)
        rows.append(dict(id=new_id(), account_id=account_id, mode=mode, state=FAILED if failed else PENDING,
                         last_error=error or (None if active else GONE_ERROR), gone=not active))
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


def _payload(rt: Runtime, approved: ev.ItemApproved, publish_at: datetime | None) -> dict:
    """What rendering needs, kept with the publication."""
    item = approved.item
    payload = {"title": item.title, "subtitle": item.subtitle, "body": item.body, "cover_url": item.cover_url,
               "category": item.category, "author_id": item.author_id, "review_id": approved.review_id,
               "link": rt.settings.item_url.format(item_id=item.item_id),
               "attachments": [{"id": a.attachment_id, "kind": a.kind, "content_type": a.content_type,
                                "size": a.size, "sha256": a.sha256, "name": a.name, "url": a.url}
                               for a in item.attachments]}
    if item.HasField("source") and item.source.name:
        payload["source"] = {"name": item.source.name, "url": item.source.url}
    if item.reprint_of:
        payload["reprint_of"] = item.reprint_of
    if publish_at is not None:
        payload["publish_at"] = iso(publish_at)
    return payload


async def publish(rt: Runtime, s: AsyncSession, approved: ev.ItemApproved) -> None:
    """A publication with one publish per targeted account, in one bulk insert: held until
    `publish_at` when embargoed; a target whose platform form the item cannot take fails
    at once with the reason; accounts left out are counted per reason. An item retracted
    before (the kill may overtake the approval) is recorded and never sent."""
    item = approved.item
    publish_at = parse_publish_at(item.publish_at)  # garbled: refused, never published early
    await store.lock_seq(s)
    pub = await s.get(Publication, item.item_id)
    if pub is not None and pub.version >= item.version:
        return  # this approval again (another event id), or an older version arriving late
    now = utcnow()
    t = item.targets
    spec = {"all": t.all, "regions": list(t.regions), "platforms": list(t.platforms), "accounts": list(t.accounts),
            "unit_kinds": list(t.unit_kinds)}
    payload = _payload(rt, approved, publish_at)
    if pub is None:
        pub = Publication(item_id=item.item_id, version=item.version, created_at=now)
        s.add(pub)
    else:  # superseded: what was not sent of the older version never will be
        await store.cancel_pending_publishes(s, now, item.item_id, below_version=item.version,
                                             error=f"superseded by version {item.version}")
    pub.version, pub.unit_id, pub.targets_spec, pub.payload, pub.updated_at = (
        item.version, item.unit_id, spec, payload, now)
    pub.publish_at, pub.excluded, pub.trace_parent = publish_at, {}, current_traceparent()
    if await s.get(Retraction, item.item_id) is not None:
        pub.suppressed, pub.target_count = True, 0
        log.info("item %s approved after its retraction: not delivered", item.item_id)
        return
    rule = TargetRule.of(spec)
    known = await store.known_accounts(s, rule.accounts) if rule.accounts else set()
    included, excluded = partition_targets(await store.candidates(s, rule), rule.accounts, known)
    failures = render_failures({c.platform for c in included}, payload)
    pub.target_count, pub.excluded = len(included), excluded
    rows = _delivery_rows([(c.account_id, c.mode, True, failures.get(c.platform)) for c in included])
    due = publish_at if publish_at and publish_at > now else now
    created = await store.insert_deliveries(s, item.item_id, item.version, PUBLISH, rows, now, due=due,
                                            nats_resend_at=_nats_resend_at(rt, now))
    if due <= now:
        fanout(rt).after_commit(s, created_for_nats(created, item.item_id, item.version, PUBLISH, now))
    if failures:
        log.info("item %s: %s", item.item_id, "; ".join(f"{p}: {e}" for p, e in failures.items()))
    store.notify_after_commit(s, signal(rt))


# --- one-key retraction -------------------------------------------------------------------

async def on_item_retracted(rt: Runtime, s: AsyncSession, event: Event) -> None:
    """Cancel what was not sent (scheduled publishes included), and send a kill to every
    account that got, or was getting, any version of the item. Without a publication yet,
    the record alone suppresses a later approval."""
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
                            reason=msg.reason, retracted_by=msg.retracted_by, started_at=now,
                            trace_parent=current_traceparent())
    s.add(retraction)
    await s.flush()  # the publishes rescheduled from now on see the retraction
    await store.cancel_pending_publishes(s, now, msg.item_id)
    if pub is not None:
        targets = await store.kill_targets(s, msg.item_id)
        retraction.target_count = len(targets)
        created = await store.insert_deliveries(
            s, msg.item_id, pub.version, KILL, _delivery_rows([(a, m, active, None) for a, m, active in targets]),
            now, due=now, nats_resend_at=_nats_resend_at(rt, now))
        # Published to the NATS clients the moment this commits; acknowledgements are written as they come.
        fanout(rt).after_commit(s, created_for_nats(created, msg.item_id, pub.version, KILL, now))
    await s.flush()
    await complete_if_done(rt, s, [msg.item_id])
    store.notify_after_commit(s, signal(rt))


def _nats_resend_at(rt: Runtime, now: datetime) -> datetime:
    """When a nats delivery sent at commit goes again if not acknowledged by then."""
    return now + timedelta(seconds=rt.settings.nats_resend_base_s)


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
        if await store.kills_outstanding(s, r.item_id):
            continue
        targets, confirmed = (await store.kill_progress(s, [r.item_id]))[r.item_id]
        now = utcnow()
        res = await s.execute(update(Retraction).where(Retraction.item_id == r.item_id,
                                                       Retraction.completed_at.is_(None)).values(completed_at=now))
        if res.rowcount == 1:
            await rt.outbox.emit(s, "govmedia.dispatch.retraction.completed", ev.RetractionCompleted(
                item_id=r.item_id, targets=targets, confirmed=confirmed, started_at=iso(r.started_at),
                completed_at=iso(now)), r.item_id)


ACKNOWLEDGED_SUBJECT = "govmedia.dispatch.deliveries.acknowledged"


async def announce_acknowledged(rt: Runtime, s: AsyncSession, rows, now,
                                trace_parents: dict[str, str] | None = None) -> None:
    """One event per item in the batch, in the acknowledging transaction: the account service
    learns from it when each account last published. Publishes only: a kill's acknowledgement
    is counted in its retraction (GET /v1/retractions, retraction.completed), and 30,000 of
    them in an event nobody reads cost a kill a tenth of its time. With `trace_parents`
    (item id → its push's traceparent, when tracing is on) each event joins the trace of its push."""
    rows = [r for r in rows if r.kind != KILL]
    if not rows:
        return
    at = iso(now)
    by_item: dict[str, list] = {}
    for r in rows:
        by_item.setdefault(r.item_id, []).append(r)
    for item_id, group in by_item.items():
        with continued((trace_parents or {}).get(item_id), "announce acknowledged"):
            await rt.outbox.emit(s, ACKNOWLEDGED_SUBJECT, ev.DeliveriesAcknowledged(deliveries=[
                ev.AcknowledgedDelivery(delivery_id=r.id, account_id=r.account_id, item_id=r.item_id,
                                        version=r.version, kind=r.kind, acknowledged_at=at) for r in group]), item_id)


# --- views ------------------------------------------------------------------------------

async def may_watch(s: AsyncSession, who: Principal, unit_id: str) -> None:
    """The item's unit, or ops, regulator and supervisor reaching it; never a matrix client."""
    if who.has(CLIENT_ROLE):
        who.require(*OVERSEERS)  # a matrix client never reads the dispatch reports
    await directory.require_reach(s, who, unit_id, *OVERSEERS)


async def get_publication(rt: Runtime, who: Principal, item_id: str) -> PublicationPublic:
    async with rt.db.session() as s:
        pub = await s.get(Publication, item_id)
        if pub is None:
            raise not_found("publication", item_id)
        await may_watch(s, who, pub.unit_id)
        counts = await store.publish_counts(s, item_id, pub.version)
        failures = await store.publish_failures(s, item_id, pub.version) if counts.get(FAILED) else {}
        retracted = await s.get(Retraction, item_id) is not None
    publish_at = as_utc(pub.publish_at)
    return PublicationPublic(
        item_id=item_id, version=pub.version, targets=pub.target_count, counts=Counts(**counts),
        retracted=retracted, created_at=iso(pub.created_at), excluded=pub.excluded or {}, failures=failures,
        publish_at=iso(publish_at), scheduled=bool(publish_at and publish_at > utcnow() and not retracted),
        suppressed=pub.suppressed)


async def get_retraction(rt: Runtime, who: Principal, item_id: str, *, limit: int = STRAGGLER_PAGE,
                         cursor: int = 0) -> RetractionPublic:
    """Exact counts, and the stragglers a page at a time (by seq after `cursor`): ops poll this
    while ten thousand kills are out, so it must not read them all each time."""
    async with rt.db.session() as s:
        r = await s.get(Retraction, item_id)
        if r is None:
            raise not_found("retraction", item_id)
        await may_watch(s, who, r.unit_id)
        targets, done = (await store.kill_progress(s, [item_id]))[item_id]
        rows = await store.kill_stragglers(s, item_id, after=cursor, limit=limit + 1)
        gone = await store.kills_gone(s, item_id, limit=GONE_LISTED)
    return RetractionPublic(
        item_id=item_id, reason=r.reason, targets=targets, confirmed=done, outstanding=targets - done,
        stragglers=[Straggler(account_id=k.account_id, state=k.state, attempts=k.attempts, last_error=k.last_error,
                              delivery_id=k.id, next_attempt_at=iso(k.next_attempt_at) if k.state == PENDING else None)
                    for k in rows[:limit]],
        stragglers_next_cursor=str(rows[limit - 1].seq) if len(rows) > limit else None,
        gone=gone, started_at=iso(r.started_at), completed_at=iso(r.completed_at),
        stragglers_alerted_at=iso(r.stragglers_alerted_at),
    )


async def get_endpoint(rt: Runtime, who: Principal, account_id: str) -> EndpointPublic:
    """What dispatch knows of an account: whether it is reached, whether it is gone, and
    the state of its endpoint's breaker in this process."""
    async with rt.db.session() as s:
        a = await s.get(Account, account_id)
        if a is None:
            raise not_found("account", account_id)
        if who.account_id and who.account_id != a.id:
            raise forbidden("other_account", "客户端只能查看自己的账号")
        if not who.account_id:
            await directory.require_reach(s, who, a.unit_id, *OVERSEERS)
    circuit = "closed"
    if a.endpoint_key and a.endpoint_key in gate(rt).breakers:
        circuit = gate(rt).breakers[a.endpoint_key].state(utcnow())
    return EndpointPublic(account_id=a.id, unit_id=a.unit_id, platform=a.platform, status=a.status,
                          delivery_mode=a.delivery_mode, endpoint_active=a.endpoint_active, gone_at=iso(a.gone_at),
                          endpoint=a.endpoint_key, circuit=circuit)

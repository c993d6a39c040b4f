"""Client metrics: reads, likes, shares and comments per item, reported by the matrix
clients as INCREMENTS since their previous report, each report with an id of the client's
choosing (a report sent again with the same id counts once). Dispatch sums them per item,
account and day (Asia/Shanghai), shows them per platform and day, and announces what was
added on the bus in batches (`govmedia.dispatch.metrics.reported`) for the account
service's activity and later indices."""
from __future__ import annotations

from datetime import date, timedelta

from govmedia.events.v1 import events_pb2 as ev
from govmedia_kit.auth import Principal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import invalid, not_found
from govmedia_kit.runtime import Runtime, periodically

from . import store
from .domain import METRIC_FIELDS, merge_metrics, shanghai_day
from .feed import client_account
from .models import (
    Account, MetricCounts, MetricsBody, MetricsReceipt, MetricsRow, PlatformMetrics, Publication,
    PublicationMetricsPublic,
)
from .usecases import may_watch

SUBJECT = "govmedia.dispatch.metrics.reported"
MAX_AGE_DAYS = 60  # a report about a day older than this is refused
EVENT_ENTRIES = 500  # entries per bus event
FLUSH_ROWS = 2000  # rows per flush transaction


async def report(rt: Runtime, who: Principal, body: MetricsBody) -> MetricsReceipt:
    """Add a client's increments (its own items only: those a publish of reached it)."""
    account_id = client_account(who)
    now = utcnow()
    today = shanghai_day(now)
    entries = [{**e.model_dump(), "day": e.day or today} for e in body.entries]
    oldest = (date.fromisoformat(today) - timedelta(days=MAX_AGE_DAYS)).isoformat()
    bad_days = sorted({e["day"] for e in entries if not (oldest <= e["day"] <= today) or not _is_date(e["day"])})
    if bad_days:
        raise invalid("invalid_day", f"日期须为近 {MAX_AGE_DAYS} 天内（北京时间）", {"days": bad_days})
    merged = merge_metrics(entries)
    async with rt.unit_of_work() as s:
        if not await store.first_report(s, account_id, body.report_id, now):
            return MetricsReceipt(report_id=body.report_id, accepted=False, duplicate=True, entries=len(merged))
        items = sorted({i for i, _ in merged})
        got = await store.items_received(s, account_id, items)
        missing = [i for i in items if i not in got]
        if missing:  # the report id goes with the rollback: the client may fix the report and send it again
            raise invalid("item_not_delivered", "只能报告本账号收到的稿件", {"items": missing[:20]})
        account = await s.get(Account, account_id)
        await store.add_metrics(s, [
            {"item_id": i, "account_id": account_id, "day": day, "platform": account.platform if account else "",
             "unit_id": account.unit_id if account else "", **counts,
             **{f"unsent_{f}": counts[f] for f in METRIC_FIELDS}, "unsent": any(counts.values()), "updated_at": now}
            for (i, day), counts in merged.items()])
    return MetricsReceipt(report_id=body.report_id, accepted=True, duplicate=False, entries=len(merged))


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
        return True
    except ValueError:
        return False


async def flush(rt: Runtime) -> int:
    """Announce what was added since the last flush, in batches; the same transaction takes
    the announced amounts off the rows (a report arriving meanwhile keeps its part)."""
    total = 0
    while True:
        async with rt.unit_of_work() as s:
            rows = await store.unsent_metrics(s, FLUSH_ROWS)
            if not rows:
                return total
            units = await store.item_units(s, {r.item_id for r in rows})
            entries = [ev.ItemMetricsDelta(
                item_id=r.item_id, account_id=r.account_id, unit_id=r.unit_id, item_unit_id=units.get(r.item_id, ""),
                platform=r.platform, day=r.day, reads=r.unsent_reads, likes=r.unsent_likes, shares=r.unsent_shares,
                comments=r.unsent_comments) for r in rows]
            for start in range(0, len(entries), EVENT_ENTRIES):
                part = entries[start:start + EVENT_ENTRIES]
                await rt.outbox.emit(s, SUBJECT, ev.MetricsReported(entries=part), part[0].item_id)
            await store.metrics_sent(s, rows)
        total += len(rows)
        if len(rows) < FLUSH_ROWS:
            return total


async def worker(rt: Runtime, stop) -> None:
    await periodically(lambda: flush(rt), rt.settings.metrics_flush_s, stop, "metrics flush", run_first=False)


async def publication_metrics(rt: Runtime, who: Principal, item_id: str) -> PublicationMetricsPublic:
    """Totals of an item per platform and day (the item's unit; ops, regulator, supervisor with reach)."""
    async with rt.db.session() as s:
        pub = await s.get(Publication, item_id)
        if pub is None:
            raise not_found("publication", item_id)
        await may_watch(s, who, pub.unit_id)
        rows = await store.metrics_by_day(s, item_id)
    days = [MetricsRow(day=r.day, platform=r.platform, **{f: int(getattr(r, f)) for f in METRIC_FIELDS}) for r in rows]
    platforms: dict[str, dict[str, int]] = {}
    for d in days:
        into = platforms.setdefault(d.platform, dict.fromkeys(METRIC_FIELDS, 0))
        for f in METRIC_FIELDS:
            into[f] += getattr(d, f)
    totals = {f: sum(getattr(d, f) for d in days) for f in METRIC_FIELDS}
    return PublicationMetricsPublic(
        item_id=item_id, totals=MetricCounts(**totals),
        platforms=[PlatformMetrics(platform=p, **c) for p, c in sorted(platforms.items())], days=days)

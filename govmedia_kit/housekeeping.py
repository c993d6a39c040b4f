"""Keeping the kit's tables from growing without end, in every service: published outbox
rows, inbox rows and idempotency keys are needed only for a while.

- An outbox row is needed until JetStream confirmed it; it is kept `outbox_keep_days`
  more so an operator can still see what went out and when.
- An inbox row guards against the same event being applied twice. JetStream keeps an
  event `nats_stream_max_age_days`, so after that (and a day's margin) no copy of it can
  come again.
- An idempotency key answers replays for 24 hours (`http.IDEMPOTENCY_TTL`).

Every replica may run this: deleting what is already gone deletes nothing.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy import delete

from .db import utcnow
from .http import IDEMPOTENCY_TTL
from .runtime import Runtime, periodically

log = logging.getLogger(__name__)


async def prune_once(rt: Runtime) -> dict[str, int]:
    tables, settings, now = rt.spec.tables, rt.settings, utcnow()
    outbox, inbox, keys = tables.outbox, tables.inbox, tables.idempotency
    statements = {
        "outbox": delete(outbox).where(outbox.c.published_at.is_not(None),
                                       outbox.c.published_at < now - timedelta(days=settings.outbox_keep_days)),
        "inbox": delete(inbox).where(inbox.c.processed_at < now - timedelta(days=settings.nats_stream_max_age_days + 1)),
        "idempotency_keys": delete(keys).where(keys.c.created_at < now - IDEMPOTENCY_TTL),
    }
    removed = {}
    for name, statement in statements.items():
        async with rt.db.transaction() as s:  # one table at a time: short write locks
            removed[name] = (await s.execute(statement)).rowcount or 0
    if any(removed.values()):
        log.info("housekeeping removed %s", ", ".join(f"{n} {name} rows" for name, n in removed.items() if n))
    return removed


async def housekeeping(rt: Runtime, stop: asyncio.Event) -> None:
    """A worker of every service (the runtime starts it): prunes hourly."""
    await periodically(lambda: prune_once(rt), rt.settings.housekeeping_interval_s, stop, "housekeeping")

"""An append-only, hash-chained audit trail that any service declares into its own metadata.

Each entry belongs to a stream (e.g. one item's reviews) and takes the next sequence number
of that stream; its hash covers the previous entry's hash and the canonical JSON of what it
records, so changing, removing or reordering an entry breaks every link after it:

    hash = sha256(prev_hash + canonical_json({stream_id, seq, action, actor, at, before, after}))

Rows are also hard to alter: the migration that creates the table installs triggers
(`append_only_ddl`) that refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL), so only
someone who drops the trigger first can change history, and `verify` then shows where.

    trail = AuditTrail(Base.metadata)                       # next to the service's tables
    await trail.append(session, item_id, "decided", user_id, before, after)   # caller's transaction
    await trail.verify(session, item_id)  # {"ok", "entries", "first_broken": {"seq", "reason"} | None}

What the chain cannot show by itself is the loss of the newest entries (a truncated tail
is still a valid chain); a caller that needs that anchors the latest hash elsewhere.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Column, DateTime, Integer, MetaData, String, Table, UniqueConstraint, insert, select
from sqlalchemy.exc import IntegrityError

from .db import as_utc, iso, utcnow

GENESIS = ""  # the "previous hash" of a stream's first entry
_APPEND_TRIES = 8  # racing appends to one stream: each loser takes the next number


def _iso(value: datetime) -> str:
    return iso(as_utc(value).astimezone(timezone.utc))


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _plain(value: Any) -> Any:
    """A JSON-safe copy (datetimes and other objects as strings), as it is stored and hashed."""
    if value is None:
        return None
    return json.loads(json.dumps(value, default=lambda v: _iso(v) if isinstance(v, datetime) else str(v),
                                 ensure_ascii=False))


def entry_hash(prev_hash: str, stream_id: str, seq: int, action: str, actor: str, at: str,
               before: Any, after: Any) -> str:
    body = canonical_json({"stream_id": stream_id, "seq": seq, "action": action, "actor": actor, "at": at,
                           "before": before, "after": after})
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def append_only_ddl(table: str, dialect: str) -> list[str]:
    """Statements that make `table` refuse UPDATE and DELETE (run them in the migration)."""
    if dialect == "postgresql":
        return [
            f"CREATE OR REPLACE FUNCTION {table}_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN RAISE EXCEPTION '{table} is append-only: % refused', TG_OP; END $$",
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_refuse_change()",
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_refuse_change()",
        ]
    if dialect == "sqlite":
        return [
            f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: UPDATE refused'); END",
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: DELETE refused'); END",
        ]
    raise ValueError(f"no append-only triggers for dialect {dialect!r}")


def drop_append_only_ddl(table: str, dialect: str) -> list[str]:
    """The reverse of `append_only_ddl` (for a migration's downgrade)."""
    if dialect == "postgresql":
        return [f"DROP TRIGGER IF EXISTS {table}_no_update ON {table}",
                f"DROP TRIGGER IF EXISTS {table}_no_delete ON {table}",
                f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
                f"DROP FUNCTION IF EXISTS {table}_refuse_change()"]
    return [f"DROP TRIGGER IF EXISTS {table}_no_update", f"DROP TRIGGER IF EXISTS {table}_no_delete"]


class AuditTrail:
    def __init__(self, metadata: MetaData, name: str = "audit_trail"):
        self.table = Table(
            name,
            metadata,
            Column("id", Integer, primary_key=True, autoincrement=True),
            Column("stream_id", String(64), nullable=False),
            Column("seq", Integer, nullable=False),
            Column("action", String(60), nullable=False),
            Column("actor", String(64), nullable=False),
            Column("at", DateTime(timezone=True), nullable=False),
            Column("before", JSON, nullable=True),
            Column("after", JSON, nullable=True),
            Column("prev_hash", String(64), nullable=False),
            Column("hash", String(64), nullable=False),
            # Two racing appends cannot both take a number: the loser's insert fails here.
            UniqueConstraint("stream_id", "seq", name=f"uq_{name}_stream_seq"),
        )

    async def append(self, session, stream_id: str, action: str, actor: str, before: dict | None,
                     after: dict | None, at: datetime | None = None) -> dict:
        """Add the next entry of `stream_id` in the caller's transaction and return it."""
        t = self.table
        at_text = _iso(at or utcnow())
        before, after = _plain(before), _plain(after)
        for attempt in range(_APPEND_TRIES):
            last = (await session.execute(select(t.c.seq, t.c.hash).where(t.c.stream_id == stream_id)
                                          .order_by(t.c.seq.desc()).limit(1))).first()
            seq, prev = (last.seq + 1, last.hash) if last else (1, GENESIS)
            row = dict(stream_id=stream_id, seq=seq, action=action, actor=actor,
                       at=datetime.fromisoformat(at_text.replace("Z", "+00:00")), before=before, after=after,
                       prev_hash=prev, hash=entry_hash(prev, stream_id, seq, action, actor, at_text, before, after))
            try:
                # A savepoint, so a lost race leaves the caller's transaction usable (PostgreSQL).
                async with session.begin_nested():
                    await session.execute(insert(t).values(**row))
            except IntegrityError:
                if attempt == _APPEND_TRIES - 1:
                    raise
                continue
            return self._public(row)
        raise AssertionError("unreachable")

    async def entries(self, session, stream_id: str, after_seq: int = 0, limit: int | None = None) -> list[dict]:
        """The stream's entries in order (those after `after_seq`, at most `limit`)."""
        t = self.table
        stmt = select(t).where(t.c.stream_id == stream_id, t.c.seq > after_seq).order_by(t.c.seq)
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = await session.execute(stmt)
        return [self._public(r._mapping) for r in rows]

    async def verify(self, session, stream_id: str) -> dict:
        """Recompute the chain: the first entry out of sequence, not linked to the one before,
        or whose hash does not match its content, is `first_broken`."""
        entries = await self.entries(session, stream_id)
        prev, broken = GENESIS, None
        for n, e in enumerate(entries, start=1):
            if e["seq"] != n:
                broken = {"seq": e["seq"], "reason": "sequence_gap", "expected_seq": n}
            elif e["prev_hash"] != prev:
                broken = {"seq": e["seq"], "reason": "prev_hash_mismatch"}
            elif e["hash"] != entry_hash(prev, stream_id, e["seq"], e["action"], e["actor"], e["at"], e["before"],
                                         e["after"]):
                broken = {"seq": e["seq"], "reason": "hash_mismatch"}
            if broken:
                break
            prev = e["hash"]
        return {"ok": broken is None, "entries": len(entries), "first_broken": broken}

    @staticmethod
    def _public(row) -> dict:
        return {"stream_id": row["stream_id"], "seq": row["seq"], "action": row["action"], "actor": row["actor"],
                "at": _iso(row["at"]), "before": row["before"], "after": row["after"],
                "prev_hash": row["prev_hash"], "hash": row["hash"]}


# --- what the REST APIs answer -------------------------------------------------------

class AuditEntryPublic(BaseModel):
    seq: int
    action: str
    actor: str
    at: str
    before: dict | None
    after: dict | None
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, entry: dict) -> "AuditEntryPublic":
        return cls(**{k: entry[k] for k in cls.model_fields})


class AuditPublic(BaseModel):
    stream_id: str
    items: list[AuditEntryPublic]
    next_cursor: str | None = None  # a sequence number


class AuditVerifyPublic(BaseModel):
    stream_id: str
    ok: bool
    entries: int
    first_broken: dict | None

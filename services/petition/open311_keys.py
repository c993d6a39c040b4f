"""Open311 API keys: who may read the full rows of /open311/v2 and who may post requests.

Province-level ops make a key for a named client with its scopes, see it once, list and revoke
keys; every creation and revocation is an entry of an append-only, hash-chained audit trail
(`petition_open311_key_audit`). Only the SHA-256 of a key is stored: a key is 256 random bits,
so a fast hash cannot be searched backwards, and a look-up is one indexed read.

Scopes:
- `open311:read_full`: GET requests with every category, the titles and notes as written, exact
  coordinates and the address, the agency responsible;
- `open311:write`: POST requests (as the keys of `PETITION_OPEN311_API_KEYS` do).
"""
from __future__ import annotations

import hashlib
import logging
import secrets

from sqlmodel import select

from govmedia_kit.auth import Principal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import conflict, not_found
from govmedia_kit.runtime import Runtime

from .domain import local_iso
from .models import Open311Key, Open311KeyIn, Open311KeyPublic, open311_audit

log = logging.getLogger(__name__)

READ_FULL = "open311:read_full"
WRITE = "open311:write"
SCOPES = (READ_FULL, WRITE)
KEY_PREFIX = "o311_"
SHOWN_PREFIX = 12          # "o311_" and 7 characters of the key: enough to tell keys apart
AUDIT_STREAM = "open311-keys"
MAX_GIVEN = 200            # a longer `api_key` is not one of ours: not even hashed


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def public(k: Open311Key, key: str | None = None) -> Open311KeyPublic:
    return Open311KeyPublic(id=k.id, name=k.name, prefix=k.prefix, scopes=k.scopes.split(), created_by=k.created_by,
                            created_at=local_iso(k.created_at), revoked_at=local_iso(k.revoked_at),
                            revoked_by=k.revoked_by, key=key)


def _summary(k: Open311Key) -> dict:
    return {"id": k.id, "name": k.name, "prefix": k.prefix, "scopes": k.scopes.split(),
            "revoked": k.revoked_at is not None}


async def create_key(rt: Runtime, who: Principal, body: Open311KeyIn) -> Open311KeyPublic:
    """A new key (shown in this answer only)."""
    who.require_province("ops")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = Open311Key(name=body.name, prefix=key[:SHOWN_PREFIX], key_hash=digest(key),
                     scopes=" ".join(s for s in SCOPES if s in body.scopes), created_by=who.subject)
    async with rt.unit_of_work() as s:
        s.add(row)
        await s.flush()
        await open311_audit.append(s, AUDIT_STREAM, "key_created", who.subject, None, _summary(row))
    log.info("open311 key %s (%s) created by %s", row.id, row.scopes, who.subject)
    return public(row, key)


async def list_keys(rt: Runtime, who: Principal) -> list[Open311KeyPublic]:
    who.require_province("ops")
    async with rt.db.session() as s:
        rows = (await s.exec(select(Open311Key).order_by(Open311Key.id))).all()
    return [public(k) for k in rows]


async def revoke_key(rt: Runtime, who: Principal, key_id: str) -> Open311KeyPublic:
    """The key stops working at once (every request looks it up)."""
    who.require_province("ops")
    async with rt.unit_of_work() as s:
        row = (await s.exec(select(Open311Key).where(Open311Key.id == key_id).with_for_update())).first()
        if row is None:
            raise not_found("open311_key", key_id)
        if row.revoked_at is not None:
            raise conflict("open311_key_revoked", "该 Open311 密钥已经吊销", {"id": key_id})
        before = _summary(row)
        row.revoked_at, row.revoked_by = utcnow(), who.subject
        s.add(row)
        await open311_audit.append(s, AUDIT_STREAM, "key_revoked", who.subject, before, _summary(row))
    log.info("open311 key %s revoked by %s", row.id, who.subject)
    return public(row)


async def audit(rt: Runtime, who: Principal) -> dict:
    """Every creation and revocation, and whether the chain is whole."""
    who.require_province("ops")
    async with rt.db.session() as s:
        entries = await open311_audit.entries(s, AUDIT_STREAM)
        check = await open311_audit.verify(s, AUDIT_STREAM)
    return {"stream_id": AUDIT_STREAM, "items": entries, "ok": check["ok"], "first_broken": check["first_broken"]}


async def authorize(rt: Runtime, given: str) -> Open311Key | None:
    """The live key `given` is, or None (unknown, revoked, malformed)."""
    given = given.strip()
    if not given.startswith(KEY_PREFIX) or len(given) > MAX_GIVEN:
        return None
    async with rt.db.session() as s:
        return (await s.exec(select(Open311Key).where(Open311Key.key_hash == digest(given),
                                                      Open311Key.revoked_at.is_(None)))).first()

"""Citizens' personal data at rest, sealed field by field (AES-256-GCM), with a keyring that
rotates.

Format of a sealed value (text, in the row's own column: no schema change to rotate):

    g2:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>

- The key id is derived from the key (12 hex digits of SHA-256 over a label and the key; it
  names the key without revealing it), so operators configure keys, never ids.
- The associated data binds the row: ``g2 ␀ <table> ␀ <row id> ␀ <field>``. A sealed value
  copied into another row, another table or another field of the same row does not open.
- The legacy format ``g1:<base64url(nonce ‖ ciphertext ‖ tag)>`` (before key ids; its
  associated data is the field name only) still opens, with whichever configured key sealed
  it, unless the keyring refuses it (``legacy=False``, once `govmedia reseal` has moved every
  row). It is never written any more.

A keyring holds the current key (it seals) and any number of retired keys (they only open).
`reseal` moves a table's rows to the current key in batches: only rows not yet sealed with
the current key are read, each row is written back only if its sealed values are still the
ones read (a conditional update), and every batch commits on its own, so the command is
idempotent and safe to interrupt or to run again while the service serves.

Blind index (duplicate detection by phone): a keyed HMAC-SHA256 whose key is derived from a
data key, so it rotates with it; during a rotation a lookup matches the index of every
configured key (`blinds`), and `reseal` recomputes the stored index with the current key.
No key appears in a message, a repr or a log line.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

PREFIX = "g2:"
LEGACY_PREFIX = "g1:"
LEGACY = "legacy"  # what key_of answers for a value in the legacy format


class SealingError(RuntimeError):
    """A data key is missing or malformed, or a sealed value does not open (the message never
    contains a key or a value)."""


def parse_key(raw: str, name: str) -> bytes:
    """32 bytes, hex or base64 (standard or URL-safe, padding optional)."""
    raw = raw.strip()
    for decode in (bytes.fromhex, lambda v: base64.urlsafe_b64decode(v + "=" * (-len(v) % 4)),
                   lambda v: base64.b64decode(v + "=" * (-len(v) % 4))):
        try:
            key = decode(raw)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise SealingError(f"{name} must be 32 bytes, hex or base64")


def parse_keys(raw: str, name: str) -> tuple[bytes, ...]:
    """A comma-separated list of keys (retired ones), blanks ignored."""
    return tuple(parse_key(part, name) for part in raw.split(",") if part.strip())


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"govmedia-data-key-id\x00" + key).hexdigest()[:12]


def _aad(table: str, row: str, field: str) -> bytes:
    for part in (table, row, field):
        if not part or "\x00" in part:
            raise SealingError("a sealed value is bound to a table, a row id and a field, none of them empty")
    return b"\x00".join((b"g2", table.encode(), row.encode(), field.encode()))


class Keyring:
    """The current data key (seals and opens) and retired ones (open only)."""

    def __init__(self, current: bytes, retired: Iterable[bytes] = (), *, index_label: bytes,
                 legacy: bool = True, name: str = "data key"):
        keys = (current, *retired)
        if any(len(k) != 32 for k in keys):
            raise SealingError(f"{name}: a data key must be 32 bytes")
        self.name = name
        self.current_id = key_id(current)
        # Current first: the legacy format (no key id) is tried with it first.
        self._aeads: dict[str, AESGCM] = {}
        self._index_keys: dict[str, bytes] = {}
        for k in keys:
            kid = key_id(k)
            self._aeads.setdefault(kid, AESGCM(k))
            self._index_keys.setdefault(kid, hmac.new(k, index_label, hashlib.sha256).digest())
        self.legacy = legacy

    def __repr__(self) -> str:  # never a key
        return f"Keyring(current={self.current_id}, keys={len(self._aeads)})"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._aeads)

    # --- sealing ----------------------------------------------------------------------

    def seal(self, value: str | None, *, table: str, row: str, field: str) -> str | None:
        if value is None:
            return None
        nonce = secrets.token_bytes(12)
        blob = self._aeads[self.current_id].encrypt(nonce, value.encode("utf-8"), _aad(table, row, field))
        return f"{PREFIX}{self.current_id}:" + base64.urlsafe_b64encode(nonce + blob).decode()

    def open(self, token: str | None, *, table: str, row: str, field: str) -> str | None:
        if token is None:
            return None
        if token.startswith(PREFIX):
            kid, sep, body = token[len(PREFIX):].partition(":")
            aead = self._aeads.get(kid)
            if not sep or aead is None:
                raise SealingError(f"a sealed value of {table}.{field} is sealed with key {kid or '?'}, which is "
                                   f"neither the current {self.name} nor a retired one")
            blob = _b64(body)
            try:
                return aead.decrypt(blob[:12], blob[12:], _aad(table, row, field)).decode("utf-8")
            except InvalidTag:
                raise SealingError(f"a sealed value of {table}.{field} does not open: altered, or copied from "
                                   "another row or field") from None
        if token.startswith(LEGACY_PREFIX):
            if not self.legacy:
                raise SealingError(f"a sealed value of {table}.{field} is in the legacy format, which is refused "
                                   "(run `govmedia reseal`, or accept it again while it runs)")
            blob = _b64(token[len(LEGACY_PREFIX):])
            for aead in self._aeads.values():
                try:
                    return aead.decrypt(blob[:12], blob[12:], field.encode()).decode("utf-8")
                except InvalidTag:
                    continue
            raise SealingError(f"a legacy sealed value of {table}.{field} opens with none of the configured "
                               f"keys ({self.name})")
        raise SealingError(f"{table}.{field} holds a value that is not sealed")

    def key_of(self, token: str | None) -> str | None:
        """The id of the key a value is sealed with (`LEGACY` for the legacy format), None for none."""
        if token is None:
            return None
        if token.startswith(PREFIX):
            return token[len(PREFIX):].partition(":")[0]
        return LEGACY if token.startswith(LEGACY_PREFIX) else None

    def needs_reseal(self, token: str | None) -> bool:
        return token is not None and not token.startswith(f"{PREFIX}{self.current_id}:")

    # --- blind index ------------------------------------------------------------------

    def blind(self, value: str | None) -> str | None:
        """A stable keyed digest under the current key: equal values match, the value itself
        cannot be read back."""
        if not value:
            return None
        return hmac.new(self._index_keys[self.current_id], value.encode("utf-8"), hashlib.sha256).hexdigest()

    def blinds(self, value: str | None) -> list[str | None]:
        """The digest under every configured key, current first: what a lookup matches while
        rows indexed under a retired key wait for `reseal`."""
        if not value:
            return [None]
        return [hmac.new(k, value.encode("utf-8"), hashlib.sha256).hexdigest() for k in self._index_keys.values()]


def _b64(body: str) -> bytes:
    try:
        blob = base64.urlsafe_b64decode(body)
    except (ValueError, binascii.Error):
        raise SealingError("a sealed value is malformed") from None
    if len(blob) < 28:
        raise SealingError("a sealed value is malformed")
    return blob


def development_key_file(data_dir: Path, key_file: str) -> Path:
    """Development only, when no key is set: a random key in the data directory, made once
    (mode 0600; the first of several processes starting together makes it)."""
    path = Path(data_dir) / key_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it a moment ago
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return path


def load_keyring(current: str, retired: str, *, name: str, data_dir: Path, key_file: str, production: bool,
                 index_label: bytes, legacy: bool = True) -> Keyring:
    """The keyring of a service from its settings: `name` (e.g. PETITION_DATA_KEY) is required
    in production; in development, when unset, a key file in the data directory is made once
    (mode 0600) and used. `retired`: the comma-separated `<name>_PREVIOUS`."""
    if current.strip():
        key = parse_key(current, name)
    elif production:
        raise SealingError(f"{name} is required in production")
    else:
        path = development_key_file(data_dir, key_file)
        key = parse_key(path.read_text(), f"{name} (development key file {path})")
    return Keyring(key, parse_keys(retired, f"{name}_PREVIOUS"), index_label=index_label, legacy=legacy, name=name)


# --- re-sealing a table -------------------------------------------------------------------

@dataclass(frozen=True)
class SealedTable:
    """Where a service keeps sealed values: each field in the column `<field>_enc` of
    `table`, bound to the row's `id`; `derive` gives further columns computed from the opened
    values (a blind index), written with them."""

    table: str
    fields: tuple[str, ...]
    derive: Callable[[Keyring, Mapping[str, str | None]], dict[str, str | None]] | None = None
    id_column: str = "id"

    def column(self, field: str) -> str:
        return f"{field}_enc"


@dataclass
class ResealReport:
    current: str
    examined: int = 0
    resealed: int = 0
    skipped: int = 0  # changed meanwhile by someone else: taken up by the next run
    before: dict[str, int] = dc_field(default_factory=dict)  # sealed values by key id, before

    def line(self) -> str:
        keys = ", ".join(f"{k}: {n}" for k, n in sorted(self.before.items())) or "none"
        return (f"current key {self.current}; rows examined {self.examined}, resealed {self.resealed}, "
                f"changed meanwhile {self.skipped}; values by key before: {keys}")


def _table(spec: SealedTable, extra: Iterable[str] = ()) -> sa.TableClause:
    cols = [spec.id_column, *(spec.column(f) for f in spec.fields), *extra]
    return sa.table(spec.table, *(sa.column(c) for c in dict.fromkeys(cols)))


def _stale(t: sa.TableClause, spec: SealedTable, keyring: Keyring):
    mine = f"{PREFIX}{keyring.current_id}:%"
    return sa.or_(*(sa.and_(t.c[spec.column(f)].is_not(None), t.c[spec.column(f)].not_like(mine))
                    for f in spec.fields))


async def count_stale(engine, spec: SealedTable, keyring: Keyring) -> int:
    """How many rows hold a value not sealed with the current key."""
    t = _table(spec)
    async with engine.connect() as conn:
        return (await conn.execute(sa.select(sa.func.count()).select_from(t).where(_stale(t, spec, keyring)))).scalar_one()


async def _immediate(conn):
    # SQLite: take the write lock at BEGIN (govmedia_kit/db.py), not at the first write.
    return await conn.execution_options(sqlite_immediate=True)


async def reseal(engine, spec: SealedTable, keyring: Keyring, batch_size: int = 500,
                 progress: Callable[[ResealReport], None] | None = None) -> ResealReport:
    """Move every row of `spec.table` to the current key, `batch_size` rows per transaction."""
    derived_cols = tuple(spec.derive(keyring, {f: None for f in spec.fields})) if spec.derive else ()
    t = _table(spec, derived_cols)
    report = ResealReport(current=keyring.current_id)
    after = ""
    while True:
        async with engine.connect() as conn, (await _immediate(conn)).begin():
            rows = (await conn.execute(
                sa.select(*t.c).where(_stale(t, spec, keyring), t.c[spec.id_column] > after)
                .order_by(t.c[spec.id_column]).limit(batch_size))).mappings().all()
            if not rows:
                break
            for row in rows:
                row_id = row[spec.id_column]
                report.examined += 1
                opened: dict[str, str | None] = {}
                values: dict[str, str | None] = {}
                for f in spec.fields:
                    token = row[spec.column(f)]
                    kid = keyring.key_of(token)
                    if kid is not None:
                        report.before[kid] = report.before.get(kid, 0) + 1
                    opened[f] = keyring.open(token, table=spec.table, row=row_id, field=f)
                    values[spec.column(f)] = keyring.seal(opened[f], table=spec.table, row=row_id, field=f)
                if spec.derive:
                    values.update(spec.derive(keyring, opened))
                # Only if nobody changed the row since it was read (then the next run takes it).
                same = [t.c[spec.column(f)] == row[spec.column(f)] if row[spec.column(f)] is not None
                        else t.c[spec.column(f)].is_(None) for f in spec.fields]
                done = await conn.execute(t.update().where(t.c[spec.id_column] == row_id, *same).values(**values))
                if done.rowcount == 1:
                    report.resealed += 1
                else:
                    report.skipped += 1
            after = rows[-1][spec.id_column]
        if progress:
            progress(report)
    return report

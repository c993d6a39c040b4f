"""Citizens' personal data at rest: names, phone numbers and ID numbers of the `petitions`
table, sealed with the petition keyring (govmedia_kit/sealing.py: AES-256-GCM, a key id in
every value, the row bound as associated data), and phones given a keyed blind index for
duplicate detection.

The keys: `PETITION_DATA_KEY` (32 bytes, base64 or hex) seals; `PETITION_DATA_KEY_PREVIOUS`
(comma-separated) lists retired keys that still open; `govmedia reseal petition` moves rows
to the current key (and their blind index with them). `PETITION_DATA_OPEN_LEGACY=false`
refuses values in the format before key ids once no row holds one. Without the key, outside
production, a key file `<GOVMEDIA_DATA_DIR>/petition-data.key` is made once (mode 0600); in
production a missing key stops the service. No key is ever logged or shown in a repr.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from govmedia_kit.sealing import Keyring, SealedTable, SealingError, load_keyring, parse_key as _parse_key

TABLE = "petitions"
FIELDS = ("contact_name", "contact_phone", "contact_id")
KEY_FILE = "petition-data.key"
# The blind index's key is derived from each data key with this label (as before key ids,
# so indexes written then still match).
INDEX_LABEL = b"govmedia-petition-blind-index"

DataKeyError = SealingError


def parse_key(raw: str) -> bytes:
    return _parse_key(raw, "PETITION_DATA_KEY")


class Vault:
    """The petition keyring bound to the `petitions` table: `seal(field, value, row)` and
    `open(field, token, row)`, where `row` is the petition's id."""

    def __init__(self, key: bytes | Keyring, retired: tuple[bytes, ...] = (), legacy: bool = True):
        self.keyring = key if isinstance(key, Keyring) else Keyring(
            key, retired, index_label=INDEX_LABEL, legacy=legacy, name="PETITION_DATA_KEY")

    def __repr__(self) -> str:  # never a key
        return f"Vault({self.keyring!r})"

    def seal(self, field: str, value: str | None, row: str) -> str | None:
        return self.keyring.seal(value, table=TABLE, row=row, field=field)

    def open(self, field: str, token: str | None, row: str) -> str | None:
        return self.keyring.open(token, table=TABLE, row=row, field=field)

    def blind(self, value: str | None) -> str | None:
        """A stable keyed digest: equal values match, the value itself cannot be read back."""
        return self.keyring.blind(value)

    def blinds(self, value: str | None) -> list[str | None]:
        """The digest under every configured key (a lookup during a rotation)."""
        return self.keyring.blinds(value)


def _derive(keyring: Keyring, opened: Mapping[str, str | None]) -> dict[str, str | None]:
    return {"contact_key": keyring.blind(opened.get("contact_phone"))}


# What `govmedia reseal petition` moves to the current key.
SEALED = SealedTable(TABLE, FIELDS, derive=_derive)


def load_vault(configured: str, data_dir: Path, production: bool, previous: str = "", legacy: bool = True) -> Vault:
    return Vault(load_keyring(configured, previous, name="PETITION_DATA_KEY", data_dir=data_dir, key_file=KEY_FILE,
                              production=production, index_label=INDEX_LABEL, legacy=legacy))

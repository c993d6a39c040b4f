"""Citizens' personal data at rest: names, phone numbers and ID numbers are sealed with
AES-256-GCM (the field name is the associated data, so a value cannot be moved to another
field), and phones get a keyed blind index (HMAC-SHA256) for duplicate detection.

The key: `PETITION_DATA_KEY` (32 bytes, base64 or hex); without it, outside production, a
key file `<GOVMEDIA_DATA_DIR>/petition-data.key` is created once (mode 0600). In production
a missing key stops the service. The key is never logged, nor shown in settings' repr.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "g1:"
KEY_FILE = "petition-data.key"


class DataKeyError(RuntimeError):
    """The data key is missing or malformed (the message never contains the key)."""


def parse_key(raw: str) -> bytes:
    raw = raw.strip()
    for decode in (bytes.fromhex, lambda v: base64.urlsafe_b64decode(v + "=" * (-len(v) % 4))):
        try:
            key = decode(raw)
        except (ValueError, binascii.Error):
            continue
        if len(key) == 32:
            return key
    raise DataKeyError("PETITION_DATA_KEY must be 32 bytes, hex or base64")


class Vault:
    def __init__(self, key: bytes):
        if len(key) != 32:
            raise DataKeyError("the data key must be 32 bytes")
        self._aead = AESGCM(key)
        self._index_key = hmac.new(key, b"govmedia-petition-blind-index", hashlib.sha256).digest()

    def __repr__(self) -> str:  # never the key
        return "Vault(<sealed>)"

    def seal(self, field: str, value: str | None) -> str | None:
        if value is None:
            return None
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), field.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, field: str, token: str | None) -> str | None:
        if token is None:
            return None
        if not token.startswith(PREFIX):
            raise DataKeyError("not a sealed value")
        blob = base64.urlsafe_b64decode(token[len(PREFIX):])
        try:
            return self._aead.decrypt(blob[:12], blob[12:], field.encode()).decode("utf-8")
        except InvalidTag:
            raise DataKeyError("a sealed value does not open with this key (wrong PETITION_DATA_KEY?)") from None

    def blind(self, value: str | None) -> str | None:
        """A stable keyed digest: equal values match, the value itself cannot be read back."""
        if not value:
            return None
        return hmac.new(self._index_key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def load_vault(configured: str, data_dir: Path, production: bool) -> Vault:
    if configured.strip():
        return Vault(parse_key(configured))
    if production:
        raise DataKeyError("PETITION_DATA_KEY is required in production")
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it a moment ago
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    return Vault(parse_key(path.read_text()))

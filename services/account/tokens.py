"""Signing keys and access tokens (RS256). The public keys are served as JWKS so every
other service verifies tokens on its own; with them, the revocation list (subject,
not-before) that ends a deactivated user's tokens everywhere (govmedia_kit/auth.py).

Keys at rest: the private halves are sealed (AES-256-GCM, `KeySealer`) with the key
encryption key ACCOUNT_KEY_ENCRYPTION_KEY, which comes from a Kubernetes Secret and never
from the database: a copy of the database or of its backups does not sign a token. The
key id is the associated data, so a sealed key cannot be moved to another row. Rows still
in clear (written before this) are sealed when the service loads its keys at start-up;
rows sealed with a previous key encryption key (ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS) are
sealed again with the current one, so the Secret can be rotated.

Rotation without downtime: a new key signs at once; a superseded key stays published
until its `retire_at` (a grace longer than the access token lifetime), so tokens it
signed keep verifying everywhere; past that it leaves the JWKS and its private half is
wiped at the next rotation."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Awaitable, Callable

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import PLATFORM_AUDIENCE, Principal, TokenVerifier
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.sealing import SealingError, development_key_file, parse_key

from .models import SigningKey, TokenRevocation
from .signin_models import SigningKeyRetirement

log = logging.getLogger(__name__)

ACCESS_TOKEN_TTL = timedelta(hours=1)
CLIENT_SECRET_SCHEME = "sha256$"


# --- signing keys sealed at rest ---------------------------------------------------

SEALED_PREFIX = "kek1:"  # kek1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>
KEK_FILE = "account-key-encryption.key"  # development only: made once in GOVMEDIA_DATA_DIR


class KeyEncryptionError(RuntimeError):
    """The key encryption key is missing, malformed or not the one a key was sealed with
    (the message never contains a key)."""


def parse_kek(raw: str, name: str = "ACCOUNT_KEY_ENCRYPTION_KEY") -> bytes:
    """32 bytes, hex or base64 (as PETITION_DATA_KEY)."""
    try:
        return parse_key(raw, name)
    except SealingError as exc:
        raise KeyEncryptionError(str(exc)) from None


class KeySealer:
    """Seals and opens signing keys with the current key encryption key; opens (only) with
    previous ones. Each key encryption key is known by an id derived from it (not secret)."""

    def __init__(self, current: bytes, previous: tuple[bytes, ...] = ()):
        self._keys = {self.key_id(k): AESGCM(k) for k in (*previous, current)}
        self.current_id = self.key_id(current)

    def __repr__(self) -> str:  # never a key
        return f"KeySealer(current={self.current_id})"

    @staticmethod
    def key_id(key: bytes) -> str:
        return hashlib.sha256(b"govmedia-account-kek-id" + key).hexdigest()[:12]

    def seal(self, kid: str, pem: str) -> str:
        nonce = secrets.token_bytes(12)
        blob = self._keys[self.current_id].encrypt(nonce, pem.encode(), kid.encode())
        return f"{SEALED_PREFIX}{self.current_id}:" + base64.urlsafe_b64encode(nonce + blob).decode()

    def open(self, kid: str, stored: str) -> str:
        if not is_sealed(stored):
            return stored  # in clear (before sealing); sealed by load_keyring
        kek_id, _, body = stored[len(SEALED_PREFIX):].partition(":")
        aead = self._keys.get(kek_id)
        if aead is None:
            raise KeyEncryptionError(f"signing key {kid} is sealed with key encryption key {kek_id}, which is neither "
                                     "ACCOUNT_KEY_ENCRYPTION_KEY nor one of ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS")
        blob = base64.urlsafe_b64decode(body)
        try:
            return aead.decrypt(blob[:12], blob[12:], kid.encode()).decode()
        except InvalidTag:
            raise KeyEncryptionError(f"signing key {kid} does not open (altered, or moved from another row)") from None

    def needs_sealing(self, stored: str) -> bool:
        """In clear, or sealed with a previous key encryption key."""
        return bool(stored) and not stored.startswith(f"{SEALED_PREFIX}{self.current_id}:")


def is_sealed(stored: str) -> bool:
    return stored.startswith(SEALED_PREFIX)


# Development only, when nothing was installed (a runtime built without the service's
# on_start, as some tests do): a fixed key, so it seals but protects nothing.
_DEVELOPMENT_KEK = hashlib.sha256(b"govmedia-account-development-kek").digest()
_sealer: KeySealer | None = None


def install_key_sealer(current: str, previous: str, data_dir: Path, production: bool) -> KeySealer:
    """The process's sealer, from ACCOUNT_KEY_ENCRYPTION_KEY (required in production; in
    development a key file in the data directory is made once, mode 0600) and the
    comma-separated ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS."""
    global _sealer
    if current.strip():
        key = parse_kek(current)
    elif production:
        raise KeyEncryptionError("ACCOUNT_KEY_ENCRYPTION_KEY is required in production")
    else:
        made = not (Path(data_dir) / KEK_FILE).exists()
        path = development_key_file(data_dir, KEK_FILE)
        if made:
            log.warning("ACCOUNT_KEY_ENCRYPTION_KEY is not set: signing keys are sealed with the development key "
                        "file %s (production refuses to start without the variable)", path)
        key = parse_kek(path.read_text())
    olds = tuple(parse_kek(p, "ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS") for p in previous.split(",") if p.strip())
    _sealer = KeySealer(key, olds)
    return _sealer


def key_sealer() -> KeySealer:
    global _sealer
    if _sealer is None:
        _sealer = KeySealer(_DEVELOPMENT_KEK)
    return _sealer


class Passwords:
    """Argon2id for passwords, which people choose: memory-hard, slow on purpose. The cost
    comes from ACCOUNT_PASSWORD_HASH_* (default RFC 9106's second choice: 64 MiB, 3 passes,
    4 lanes, ~0.25 s of CPU). A hash made with other parameters still verifies (they are in
    the hash) and is renewed at the user's next sign-in (`needs_rehash`)."""

    def __init__(self, memory_kib: int, time_cost: int, parallelism: int):
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        # Checked against when the user does not exist: same parameters, same cost.
        self._dummy = self._hasher.hash("no-such-user-" + secrets.token_hex(8))

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """False for a wrong password or no user; an unknown user costs the same as a known
        one, so timing does not reveal usernames."""
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and stored_hash is not None
        except (VerifyMismatchError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)


def passwords(rt) -> Passwords:
    """The process's password hasher, with the service's settings (made at start-up)."""
    found = rt.state.get("passwords")
    if found is None:
        cfg = rt.settings
        found = rt.state["passwords"] = Passwords(cfg.password_hash_memory_kib, cfg.password_hash_time_cost,
                                                  cfg.password_hash_parallelism)
    return found


def hash_client_secret(secret: str) -> str:
    """A client secret is 256 random bits the platform made, not a person's choice: there is
    no guessing to slow down, so one SHA-256 is enough. (Argon2 would cost the account
    service a quarter-second of CPU per token: 10,000 apps reconnecting, 40 minutes.)"""
    return CLIENT_SECRET_SCHEME + hashlib.sha256(secret.encode()).hexdigest()


def is_legacy_client_secret(stored_hash: str | None) -> bool:
    """Issued before secrets were kept as SHA-256: an Argon2 hash."""
    return stored_hash is not None and not stored_hash.startswith(CLIENT_SECRET_SCHEME)


def verify_client_secret(stored_hash: str | None, secret: str, legacy: Passwords) -> bool:
    """A legacy secret (`is_legacy_client_secret`) is checked by `legacy`."""
    if is_legacy_client_secret(stored_hash):
        return legacy.verify(stored_hash, secret)
    made = hash_client_secret(secret)
    return hmac.compare_digest(stored_hash or made, made) and stored_hash is not None


def new_signing_key() -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    kid = f"k-{utcnow():%Y%m%d}-{secrets.token_hex(3)}"
    return SigningKey(kid=kid, private_pem=key_sealer().seal(kid, pem), created_at=utcnow())


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    active: bool
    created_at: datetime
    retire_at: datetime | None  # None: published for as long as it is kept

    def published(self, now: datetime) -> bool:
        return self.retire_at is None or now < self.retire_at


class KeyRing:
    """The active signing key (private) and every published key (public)."""

    def __init__(self, keys: list[SigningKey], retire_at: dict[str, datetime] | None = None):
        retire_at = retire_at or {}
        now = utcnow()
        sealer = key_sealer()
        self.keys: dict[str, KeyInfo] = {}
        self._private = {}
        for k in keys:
            info = KeyInfo(k.kid, k.active, as_utc(k.created_at), as_utc(retire_at.get(k.kid)))
            self.keys[k.kid] = info
            if k.private_pem and (info.active or info.published(now)):
                pem = sealer.open(k.kid, k.private_pem)
                self._private[k.kid] = serialization.load_pem_private_key(pem.encode(), None)
        active = [self.keys[kid] for kid in self._private if self.keys[kid].active]
        if not active:
            raise RuntimeError("no active signing key")
        self.active_kid = max(active, key=lambda k: k.created_at).kid

    def published_kids(self, now: datetime | None = None) -> list[str]:
        now = now or utcnow()
        return [kid for kid in self._private if kid == self.active_kid or self.keys[kid].published(now)]

    def next_retirement(self) -> datetime | None:
        """When the published set next shrinks by itself (a grace period ends)."""
        now = utcnow()
        ends = [self.keys[kid].retire_at for kid in self.published_kids(now) if self.keys[kid].retire_at]
        return min(ends) if ends else None

    def jwks(self) -> dict:
        out = []
        for kid in self.published_kids():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._private[kid].public_key()))
            jwk.update({"kid": kid, "use": "sig", "alg": "RS256"})
            out.append(jwk)
        return {"keys": out}

    def sign(self, claims: dict, issuer: str) -> tuple[str, int]:
        now = utcnow()
        payload = {**claims, "iss": issuer, "aud": PLATFORM_AUDIENCE, "iat": int(now.timestamp()),
                   "exp": int((now + ACCESS_TOKEN_TTL).timestamp()), "jti": secrets.token_hex(8)}
        token = jwt.encode(payload, self._private[self.active_kid], algorithm="RS256",
                           headers={"kid": self.active_kid})
        return token, int(ACCESS_TOKEN_TTL.total_seconds())

    def same_keys(self, other: "KeyRing") -> bool:
        return self.keys == other.keys and self.active_kid == other.active_kid


async def load_keyring(session: AsyncSession) -> KeyRing:
    """Load the signing keys, creating the first one on a new database. A key still in clear,
    or sealed with a previous key encryption key, is sealed with the current one here (in the
    caller's transaction: at start-up, that is before anything is served)."""
    keys = list((await session.exec(select(SigningKey))).all())
    sealer = key_sealer()
    for key in keys:
        if sealer.needs_sealing(key.private_pem):
            key.private_pem = sealer.seal(key.kid, sealer.open(key.kid, key.private_pem))
            session.add(key)
            log.info("signing key %s sealed with key encryption key %s", key.kid, sealer.current_id)
    if not any(k.active and k.private_pem for k in keys):
        key = new_signing_key()
        session.add(key)
        await session.flush()
        keys.append(key)
    retirements = (await session.exec(select(SigningKeyRetirement))).all()
    return KeyRing(keys, {r.kid: r.retire_at for r in retirements})


class RingVerifier(TokenVerifier):
    """How the account service verifies its own tokens: from its key ring, no JWKS round trip.

    A key past its grace stops verifying at once; a kid not in the ring (another replica
    rotated) reloads the ring from the database, at most once per two seconds; and every
    `JWKS_REFRESH_S` the ring and the revocation list are read again from the database, so
    a key retired or a user deactivated on another replica is refused here as everywhere."""

    def __init__(self, ring: KeyRing, issuer: str, reload: Callable[[], Awaitable[object]],
                 revocations: Callable[[], Awaitable[list[tuple[str, int]]]] | None = None):
        super().__init__(None, issuer)
        self.refreshes = True
        self._reload = reload
        self._revocations = revocations
        self._good_at = time.monotonic()
        self.use(ring)

    def configure(self, refresh_s: float, revocations: Callable[[], Awaitable[list[tuple[str, int]]]]) -> None:
        self.refresh_s = refresh_s
        self._revocations = revocations

    def use(self, ring: KeyRing) -> None:
        self.ring = ring
        self._load(ring.jwks())
        self._valid_until = ring.next_retirement()

    async def verify(self, token: str) -> Principal:
        if self._valid_until is not None and utcnow() >= self._valid_until:
            self.use(self.ring)  # a grace period ended: drop that key
        return await super().verify(token)

    async def _fetch(self) -> bool:
        await self._reload()
        if self._revocations is not None:
            self.use_revocations(await self._revocations())
        return True


# --- revocations ---------------------------------------------------------------------

# How long an entry is listed: past one token lifetime (and some clock skew) after its
# not-before, every token it refuses has expired anyway.
REVOCATION_LISTED = ACCESS_TOKEN_TTL + timedelta(minutes=5)


def not_before_now() -> int:
    """The not-before of a change made now: tokens issued in this second or earlier are
    refused (`iat` is in whole seconds), so a token issued a moment before the change, in
    the same second, cannot slip through; a new one made in that second is refused too and
    its holder signs in again."""
    return int(utcnow().timestamp()) + 1


async def revoke_subject(s: AsyncSession, subject: str, reason: str) -> int:
    """Refuse `subject`'s tokens issued until now, in the caller's transaction."""
    nbf = not_before_now()
    at = datetime.fromtimestamp(nbf, tz=utcnow().tzinfo)
    row = await s.get(TokenRevocation, subject)
    if row is None:
        s.add(TokenRevocation(subject=subject, not_before=at, reason=reason))
    else:
        row.not_before, row.reason = at, reason
        s.add(row)
    return nbf


async def listed_revocations(s: AsyncSession) -> list[tuple[str, int]]:
    """(subject, not-before) of the revocations that can still refuse an unexpired token."""
    since = utcnow() - REVOCATION_LISTED
    rows = (await s.exec(select(TokenRevocation).where(TokenRevocation.not_before > since))).all()
    return [(r.subject, int(as_utc(r.not_before).timestamp())) for r in rows]


async def load_revocations(rt) -> list[tuple[str, int]]:
    async with rt.db.session() as s:
        return await listed_revocations(s)


def configure_verifier(rt) -> None:
    """At start-up, after the key ring: the account service's own verifier reads the ring and
    the revocation list from the database every JWKS_REFRESH_S."""
    verifier = rt.verifier
    if isinstance(verifier, RingVerifier):
        verifier.configure(rt.settings.jwks_refresh_s, lambda: load_revocations(rt))

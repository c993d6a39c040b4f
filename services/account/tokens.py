"""Signing keys and access tokens (RS256). The public keys are served as JWKS so every
other service verifies tokens on its own.

Rotation without downtime: a new key signs at once; a superseded key stays published
until its `retire_at` (a grace longer than the access token lifetime), so tokens it
signed keep verifying everywhere; past that it leaves the JWKS and its private half is
wiped at the next rotation."""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Awaitable, Callable

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import Principal, TokenVerifier
from govmedia_kit.db import as_utc, utcnow

from .models import SigningKey
from .signin_models import SigningKeyRetirement

ACCESS_TOKEN_TTL = timedelta(hours=1)
CLIENT_SECRET_SCHEME = "sha256$"


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
    return SigningKey(kid=f"k-{utcnow():%Y%m%d}-{secrets.token_hex(3)}", private_pem=pem, created_at=utcnow())


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
        self.keys: dict[str, KeyInfo] = {}
        self._private = {}
        for k in keys:
            info = KeyInfo(k.kid, k.active, as_utc(k.created_at), as_utc(retire_at.get(k.kid)))
            self.keys[k.kid] = info
            if k.private_pem and (info.active or info.published(now)):
                self._private[k.kid] = serialization.load_pem_private_key(k.private_pem.encode(), None)
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
        payload = {**claims, "iss": issuer, "iat": int(now.timestamp()),
                   "exp": int((now + ACCESS_TOKEN_TTL).timestamp()), "jti": secrets.token_hex(8)}
        token = jwt.encode(payload, self._private[self.active_kid], algorithm="RS256",
                           headers={"kid": self.active_kid})
        return token, int(ACCESS_TOKEN_TTL.total_seconds())

    def same_keys(self, other: "KeyRing") -> bool:
        return self.keys == other.keys and self.active_kid == other.active_kid


async def load_keyring(session: AsyncSession) -> KeyRing:
    """Load the signing keys, creating the first one on a new database."""
    keys = list((await session.exec(select(SigningKey))).all())
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
    rotated) reloads the ring from the database, at most once per two seconds."""

    def __init__(self, ring: KeyRing, issuer: str, reload: Callable[[], Awaitable[object]]):
        super().__init__(None, issuer)
        self._reload = reload
        self._reloaded_at = 0.0
        self.use(ring)

    def use(self, ring: KeyRing) -> None:
        self.ring = ring
        self._keys = {}
        self._load(ring.jwks())
        self._valid_until = ring.next_retirement()

    async def verify(self, token: str) -> Principal:
        if self._valid_until is not None and utcnow() >= self._valid_until:
            self.use(self.ring)  # a grace period ended: drop that key
        return await super().verify(token)

    async def _refresh(self) -> None:
        if time.monotonic() - self._reloaded_at < 2:
            return
        self._reloaded_at = time.monotonic()
        await self._reload()

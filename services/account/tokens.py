"""Signing keys and access tokens (RS256). The public keys are served as JWKS so every
other service verifies tokens on its own."""
from __future__ import annotations

import json
import secrets
from datetime import timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.db import utcnow

from .models import SigningKey

ACCESS_TOKEN_TTL = timedelta(hours=1)
# Argon2id, memory-hard; the library's defaults (64 MiB, 3 passes) follow RFC 9106's second choice.
_hasher = PasswordHasher()
# Compared against when the user does not exist, so timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("no-such-user-" + secrets.token_hex(8))


def hash_secret(secret: str) -> str:
    return _hasher.hash(secret)


def verify_secret(stored_hash: str | None, secret: str) -> bool:
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, secret) and stored_hash is not None
    except (VerifyMismatchError, InvalidHashError):
        return False


class KeyRing:
    """The active signing key (private) and every published key (public)."""

    def __init__(self, keys: list[SigningKey]):
        self._private = {k.kid: serialization.load_pem_private_key(k.private_pem.encode(), None) for k in keys}
        active = [k for k in keys if k.active]
        self.active_kid = max(active, key=lambda k: k.created_at).kid

    def jwks(self) -> dict:
        out = []
        for kid, key in self._private.items():
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
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


async def load_keyring(session: AsyncSession) -> KeyRing:
    """Load the signing keys, creating the first one on a new database."""
    keys = list((await session.exec(select(SigningKey))).all())
    if not keys:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        key = SigningKey(kid=f"k-{utcnow():%Y%m%d}-{secrets.token_hex(3)}", private_pem=pem)
        session.add(key)
        await session.flush()
        keys = [key]
    return KeyRing(keys)

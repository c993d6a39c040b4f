"""NATS decentralised authentication: nkeys and the JWTs the server verifies by itself.

The NATS server runs in operator mode: an operator signs accounts, an account (or one of
its signing keys) signs users, and the server checks every connection's user JWT, and the
permissions in it, without asking us. Three accounts: SYS (the server's own), GOVMEDIA
(the services' bus: each service a user allowed only its own subjects) and CLIENTS (matrix
clients: each a user allowed only its own subjects). A user is revoked by listing its key
in its account's JWT and pushing that JWT to the servers, which then disconnect it.

The format is the one of github.com/nats-io/jwt (v2): base64url(header).base64url(claims)
.base64url(ed25519 signature by the issuer's nkey); `jti` is the base32 SHA-512/256 of the
claims without it."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass

import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
UNLIMITED = {"subs": -1, "data": -1, "payload": -1}
ACCOUNT_LIMITS = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
                  "conn": -1, "leaf": -1}
JETSTREAM_LIMITS = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}

_PREFIX = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
           "user": nkeys.PREFIX_BYTE_USER}


@dataclass(frozen=True)
class Key:
    """An nkey: `seed` (secret, b"S…") and its `public` key ("O…", "A…", "U…")."""

    seed: bytes
    public: str

    @classmethod
    def new(cls, kind: str) -> "Key":
        return cls.of(nkeys.encode_seed(os.urandom(32), _PREFIX[kind]))

    @classmethod
    def of(cls, seed: bytes | str) -> "Key":
        seed = seed.encode() if isinstance(seed, str) else seed
        pair = nkeys.from_seed(bytearray(seed))
        return cls(seed=bytes(seed), public=pair.public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return nkeys.from_seed(bytearray(self.seed)).sign(data)

    def __repr__(self) -> str:  # never the seed
        return f"Key({self.public})"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims: dict, issuer: Key) -> str:
    claims = dict(claims, iss=issuer.public, iat=claims.get("iat") or int(time.time()), jti="")
    digest = hashlib.new("sha512_256", json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    signing_input = f"{_b64(json.dumps(HEADER).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def decode(token: str) -> dict:
    """The claims of a JWT, unverified (the server verifies; this reads what we issued)."""
    return json.loads(_unb64(token.split(".")[1]))


def operator_jwt(operator: Key, name: str, system_account: str, signing_keys: list[str] = ()) -> str:
    nats = {"type": "operator", "version": 2, "system_account": system_account}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    return encode({"sub": operator.public, "name": name, "nats": nats}, operator)


def account_jwt(issuer: Key, account: str, name: str, *, jetstream: bool = False, signing_keys: list[str] = (),
                revocations: dict[str, int] | None = None) -> str:
    limits = dict(ACCOUNT_LIMITS, **(JETSTREAM_LIMITS if jetstream else {}))
    nats = {"type": "account", "version": 2, "limits": limits, "default_permissions": {"pub": {}, "sub": {}}}
    if signing_keys:
        nats["signing_keys"] = list(signing_keys)
    if revocations:
        nats["revocations"] = dict(sorted(revocations.items()))
    return encode({"sub": account, "name": name, "nats": nats}, issuer)


def user_jwt(issuer: Key, user: str, name: str, *, publish: list[str], subscribe: list[str],
             issuer_account: str | None = None, expires_at: int | None = None,
             connection_types: list[str] = (), allow_responses: bool = False) -> str:
    """A user allowed to publish and subscribe to these subjects only. `issuer_account`: the
    account when `issuer` is one of its signing keys."""
    nats = {"type": "user", "version": 2, "pub": {"allow": list(publish)}, "sub": {"allow": list(subscribe)},
            **UNLIMITED}
    if issuer_account:
        nats["issuer_account"] = issuer_account
    if connection_types:
        nats["allowed_connection_types"] = list(connection_types)
    if allow_responses:
        nats["resp"] = {"max": 1, "ttl": 0}
    claims = {"sub": user, "name": name, "nats": nats}
    if expires_at:
        claims["exp"] = int(expires_at)
    return encode(claims, issuer)


def creds(jwt: str, seed: bytes) -> str:
    """The .creds file nats clients read (nats-py: `user_credentials=`; nats CLI: --creds)."""
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def parse_creds(text: str) -> tuple[str, bytes]:
    """(jwt, seed) of a .creds file."""
    blocks = [line.strip() for line in text.splitlines()]
    jwt = blocks[blocks.index("-----BEGIN NATS USER JWT-----") + 1]
    seed = blocks[blocks.index("-----BEGIN USER NKEY SEED-----") + 1]
    return jwt, seed.encode()


def is_public_user_key(value: str) -> bool:
    """A well-formed public user nkey: "U…", base32 of prefix + 32 bytes + CRC-16."""
    if not isinstance(value, str) or len(value) != 56 or not value.startswith("U"):
        return False
    try:
        raw = base64.b32decode(value.encode())
    except ValueError:
        return False
    return (len(raw) == 35 and raw[0] == nkeys.PREFIX_BYTE_USER
            and int.from_bytes(raw[-2:], "little") == nkeys.crc16(raw[:-2]))

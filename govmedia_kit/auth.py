"""Who is calling: RS256 JWTs issued by the account service, verified against its JWKS.

Every service verifies tokens itself (no call per request): keys are fetched from
`JWKS_URL` once and again only when a token names a key id not yet seen (rotation).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Iterable

import httpx
import jwt
from fastapi import Depends, Request

from .errors import AppError, forbidden, unauthenticated

log = logging.getLogger(__name__)

# Roles (issue 3): ops, regulator and supervisor reach a region subtree; the others their own unit.
ROLES = ("ops", "regulator", "supervisor", "principal", "deputy", "chief_editor", "section_head", "editor", "handler")
CLIENT_ROLE = "client"  # a matrix client holding client credentials of one account


@dataclass(frozen=True)
class Principal:
    subject: str  # user id, or the account id for a matrix client
    name: str
    unit_id: str
    roles: tuple[str, ...] = field(default_factory=tuple)
    account_id: str = ""  # set for matrix clients only

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    @property
    def is_ops(self) -> bool:
        return "ops" in self.roles

    def require(self, *roles: str) -> "Principal":
        if not self.has(*roles):
            raise forbidden("role_required", f"需要以下角色之一：{'、'.join(roles)}")
        return self

    def require_unit(self, unit_id: str, *, cross_unit_roles: Iterable[str] = ("ops",)) -> "Principal":
        """The caller acts for `unit_id`, or holds a role that reaches every unit."""
        if self.unit_id != unit_id and not self.has(*cross_unit_roles):
            raise forbidden("other_unit", "无权访问其他单位的数据")
        return self


class TokenVerifier:
    def __init__(self, jwks_url: str | None, issuer: str, static_jwks: dict | None = None):
        self.jwks_url = jwks_url
        self.issuer = issuer
        self._keys: dict[str, object] = {}
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        if static_jwks:
            self._load(static_jwks)

    def _load(self, jwks: dict) -> None:
        for jwk in jwks.get("keys", []):
            self._keys[jwk["kid"]] = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))

    async def _refresh(self) -> None:
        if not self.jwks_url:
            return
        async with self._lock:
            if time.monotonic() - self._fetched_at < 2:  # at most one fetch per burst of unknown kids
                return
            try:
                async with httpx.AsyncClient(timeout=3) as client:
                    resp = await client.get(self.jwks_url)
                    resp.raise_for_status()
                    self._load(resp.json())
            except Exception as exc:
                log.warning("cannot fetch JWKS from %s: %s", self.jwks_url, type(exc).__name__)
            finally:
                self._fetched_at = time.monotonic()

    async def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError:
            raise unauthenticated("访问令牌格式无效")
        if kid not in self._keys:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise unauthenticated("访问令牌的签名密钥未知")
        try:
            claims = jwt.decode(token, key=key, algorithms=["RS256"], issuer=self.issuer,
                                options={"require": ["exp", "sub", "iss"]})
        except jwt.ExpiredSignatureError:
            raise unauthenticated("访问令牌已过期")
        except jwt.PyJWTError:
            raise unauthenticated("访问令牌无效")
        return Principal(
            subject=claims["sub"],
            name=claims.get("name", ""),
            unit_id=claims.get("unit", ""),
            roles=tuple(claims.get("roles", [])),
            account_id=claims.get("account", ""),
        )


def bearer(value: str | None) -> str:
    if not value or not value.lower().startswith("bearer "):
        raise unauthenticated()
    return value[7:].strip()


def people_only(who: Principal) -> Principal:
    """A matrix client's token is for receiving and acknowledging pushes, nothing else:
    it must not read drafts, reviews or the ledger of its unit."""
    if CLIENT_ROLE in who.roles:
        raise forbidden("client_not_allowed", "客户端凭据只能用于接收推送和回执")
    return who


async def _any_principal(request: Request) -> Principal:
    verifier: TokenVerifier = request.app.state.verifier
    return await verifier.verify(bearer(request.headers.get("authorization")))


async def _principal(request: Request) -> Principal:
    return people_only(await _any_principal(request))


async def _optional_principal(request: Request) -> Principal | None:
    if not request.headers.get("authorization"):
        return None
    return await _principal(request)


# FastAPI dependencies: `who: CurrentPrincipal` in a route's parameters (people);
# `AnyPrincipal` where matrix clients are welcome too (dispatch's feed and acks).
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
AnyPrincipal = Annotated[Principal, Depends(_any_principal)]
OptionalPrincipal = Annotated[Principal | None, Depends(_optional_principal)]


async def grpc_principal(context, verifier: TokenVerifier, allow_clients: bool = False) -> Principal:
    metadata = dict(context.invocation_metadata() or ())
    who = await verifier.verify(bearer(metadata.get("authorization")))
    return who if allow_clients else people_only(who)


__all__ = [
    "AnyPrincipal", "AppError", "CLIENT_ROLE", "CurrentPrincipal", "OptionalPrincipal", "Principal", "ROLES",
    "TokenVerifier", "bearer", "grpc_principal", "people_only",
]

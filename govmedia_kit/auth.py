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
REGION_ROLES = ("ops", "regulator", "supervisor")
CLIENT_ROLE = "client"  # a matrix client holding client credentials of one account


def is_province_path(region_path: str) -> bool:
    """A region path is "/<province>/<city>/…/"; one segment is the province itself."""
    return region_path.count("/") == 2


@dataclass(frozen=True)
class Principal:
    subject: str  # user id, or the account id for a matrix client
    name: str
    unit_id: str
    roles: tuple[str, ...] = field(default_factory=tuple)
    account_id: str = ""  # set for matrix clients only
    # Materialised path of the caller's unit's region, "/<province>/<city>/…/" (token claim
    # `region`): how far ops, regulator and supervisor reach beyond their own unit.
    region_path: str = ""

    def __post_init__(self) -> None:
        # A path ends with "/", so "/p/a/" never counts as a prefix of "/p/ab/".
        if self.region_path and not self.region_path.endswith("/"):
            object.__setattr__(self, "region_path", self.region_path + "/")

    def has(self, *roles: str) -> bool:
        return any(r in self.roles for r in roles)

    def require(self, *roles: str) -> "Principal":
        if not self.has(*roles):
            raise forbidden("role_required", f"需要以下角色之一：{'、'.join(roles)}")
        return self

    def reaches_region(self, region_path: str | None) -> bool:
        """The region (given by its path) lies in the caller's subtree. People of the province
        level reach everything, even a unit a read model has not heard of yet."""
        if not self.region_path:
            return False
        return is_province_path(self.region_path) or bool(region_path and region_path.startswith(self.region_path))

    def scope(self, *cross_unit_roles: str) -> str | None:
        """How far a list reaches for this caller: None = their own unit only; otherwise the
        region path prefix of what they read across units ("" = the whole province)."""
        if not self.region_path or not self.has(*(r for r in cross_unit_roles if r in REGION_ROLES)):
            return None
        return "" if is_province_path(self.region_path) else self.region_path

    def require_unit(self, unit_id: str, region_path: str | None = None, *,
                     cross_unit_roles: Iterable[str] = ("ops",)) -> "Principal":
        """The caller acts for `unit_id`, or holds one of `cross_unit_roles` (only ops, regulator
        and supervisor can reach beyond a unit) and the unit's region is in their subtree."""
        if self.unit_id == unit_id:
            return self
        if self.scope(*cross_unit_roles) is None or not self.reaches_region(region_path):
            raise forbidden("other_unit", "无权访问其他单位的数据")
        return self

    def require_province(self, *roles: str) -> "Principal":
        """One of `roles` at the province level: for what is the whole platform's (signing keys,
        the approved platform list), not a region's."""
        self.require(*roles)
        if self.scope(*roles) != "":
            raise forbidden("province_only", "仅省级人员可以执行此操作")
        return self

    def require_region(self, region_path: str | None, *, cross_unit_roles: Iterable[str]) -> "Principal":
        """The caller holds one of `cross_unit_roles` and the region is in their subtree."""
        if self.scope(*cross_unit_roles) is None or not self.reaches_region(region_path):
            raise forbidden("other_region", "无权访问本辖区以外的数据")
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
            region_path=claims.get("region", ""),
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
    "AnyPrincipal", "AppError", "CLIENT_ROLE", "CurrentPrincipal", "OptionalPrincipal", "Principal", "REGION_ROLES",
    "ROLES",
    "TokenVerifier", "bearer", "grpc_principal", "people_only",
]

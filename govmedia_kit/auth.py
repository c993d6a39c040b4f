"""Who is calling: RS256 JWTs issued by the account service, verified against its JWKS.

Every service verifies tokens itself (no call per request). What a token must carry: `iss`
(`TOKEN_ISSUER`), `aud` = `govmedia-api` (PLATFORM_AUDIENCE: one audience for all the
platform's APIs; a JWT made for anything else, or without an audience, is refused), `sub`,
`iat` and `exp`.

Keys and revocations, and how fast a change reaches every service (issue 16):
- Every fetch REPLACES the key set: a key the account service no longer publishes (retired,
  even with `grace_s: 0`) stops verifying at the next fetch.
- The verifier fetches `JWKS_URL` again once its copy is `JWKS_REFRESH_S` old (default 30 s,
  at most 60): the first request after that waits for the fetch (one fetch per process,
  the others wait on it), so no request is verified against a copy older than the interval
  plus one fetch. A token naming an unknown key id fetches at once, at most every 2 s.
- Together with the JWKS it fetches the account service's revocation list
  (`/internal/token-revocations`, served to the cluster only, never routed by the ingress):
  pairs (subject, not-before) written when a user is deactivated, their roles change or
  their password is reset. A token of that subject issued (`iat`) before not-before is
  refused (401). Entries are listed for one access-token lifetime after their not-before:
  by then every token they refuse has expired anyway. So a deactivated user's tokens stop
  working everywhere within `JWKS_REFRESH_S` (plus one fetch), without a call per request
  and without a consumer in every service; an event on the bus would have needed a table
  and a consumer in each service and would reach a replica that is behind later still.
- A verifier that cannot fetch keeps its last good copy for one access-token lifetime
  (`MAX_STALE_S`, 1 h) and then refuses (503 `token_verification_unavailable`): an outage of
  the account service cannot keep a revoked token alive past its own expiry, and since no
  token can be issued meanwhile, refusing after an hour costs nobody a valid token.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Iterable
from urllib.parse import urlsplit, urlunsplit

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


PLATFORM_AUDIENCE = "govmedia-api"  # the `aud` of every token the account service issues
DEFAULT_REFRESH_S = 30.0  # JWKS_REFRESH_S
UNKNOWN_KID_INTERVAL_S = 2.0  # at most one fetch per this for tokens naming an unknown key id
MAX_STALE_S = 3600.0  # the access token lifetime: past it without a good fetch, refuse
REVOCATIONS_PATH = "/internal/token-revocations"


def revocations_url_for(jwks_url: str | None) -> str | None:
    """The account service's revocation list, next to its JWKS (same scheme, host and port)."""
    if not jwks_url:
        return None
    parts = urlsplit(jwks_url)
    return urlunsplit((parts.scheme, parts.netloc, REVOCATIONS_PATH, "", ""))


class TokenVerifier:
    """Verifies tokens against keys fetched from `jwks_url` (or given once as `static_jwks`),
    and refuses tokens of subjects revoked since they were issued (module docstring)."""

    def __init__(self, jwks_url: str | None, issuer: str, static_jwks: dict | None = None, *,
                 refresh_s: float = DEFAULT_REFRESH_S, audience: str = PLATFORM_AUDIENCE,
                 revocations_url: str | None = None, max_stale_s: float = MAX_STALE_S):
        self.jwks_url = jwks_url
        self.revocations_url = revocations_url or revocations_url_for(jwks_url)
        self.issuer = issuer
        self.audience = audience
        self.refresh_s = refresh_s
        self.max_stale_s = max_stale_s
        self.refreshes = bool(jwks_url)  # whether keys and revocations come from somewhere
        self._keys: dict[str, object] = {}
        self._not_before: dict[str, int] = {}  # subject -> tokens issued before this (epoch s) refused
        self._fetched_at = -1e9  # last attempt (monotonic)
        self._good_at: float | None = None  # last attempt that brought both keys and revocations
        self._lock = asyncio.Lock()
        if static_jwks:
            self._load(static_jwks)

    @classmethod
    def for_settings(cls, settings) -> "TokenVerifier":
        return cls(settings.jwks_url, settings.token_issuer,
                   refresh_s=getattr(settings, "jwks_refresh_s", DEFAULT_REFRESH_S))

    def _load(self, jwks: dict) -> None:
        """Replace the key set with this JWKS (a key not in it no longer verifies)."""
        keys = {}
        for jwk in jwks.get("keys", []):
            keys[jwk["kid"]] = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
        self._keys = keys

    def use_revocations(self, entries: Iterable[tuple[str, int]]) -> None:
        """Replace the revocation list: (subject, not-before as epoch seconds)."""
        self._not_before = {sub: int(nbf) for sub, nbf in entries}

    def revoke(self, subject: str, not_before: int) -> None:
        """Refuse `subject`'s tokens issued before `not_before` at once in this process (the
        account service, where the change is made; the others learn it at their next fetch)."""
        self._not_before[subject] = max(int(not_before), self._not_before.get(subject, 0))

    async def _fetch(self) -> bool:
        """Fetch the JWKS and the revocation list; True when both came."""
        async with httpx.AsyncClient(timeout=3) as client:
            resp = await client.get(self.jwks_url)
            resp.raise_for_status()
            self._load(resp.json())
            if not self.revocations_url:
                return True
            resp = await client.get(self.revocations_url)
            resp.raise_for_status()
            self.use_revocations((e["sub"], e["not_before"]) for e in resp.json().get("revocations", []))
            return True

    async def _refresh(self, min_interval: float | None = None) -> None:
        if not self.refreshes:
            return
        interval = UNKNOWN_KID_INTERVAL_S if min_interval is None else min_interval
        async with self._lock:
            if time.monotonic() - self._fetched_at < interval:  # another caller just fetched
                return
            try:
                if await self._fetch():
                    self._good_at = time.monotonic()
            except Exception as exc:
                log.warning("cannot fetch keys from %s: %s", self.jwks_url, type(exc).__name__)
            finally:
                self._fetched_at = time.monotonic()

    async def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid", "")
        except jwt.PyJWTError:
            raise unauthenticated("访问令牌格式无效")
        if self.refreshes:
            if time.monotonic() - self._fetched_at >= self.refresh_s:
                await self._refresh(self.refresh_s)
            elif kid not in self._keys:
                await self._refresh()
            if self._good_at is not None and time.monotonic() - self._good_at > self.max_stale_s:
                raise AppError(503, "token_verification_unavailable", "暂时无法核验访问令牌，请稍后再试")
        key = self._keys.get(kid)
        if key is None:
            raise unauthenticated("访问令牌的签名密钥未知")
        try:
            claims = jwt.decode(token, key=key, algorithms=["RS256"], issuer=self.issuer, audience=self.audience,
                                options={"require": ["exp", "iat", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise unauthenticated("访问令牌已过期")
        except jwt.PyJWTError:
            raise unauthenticated("访问令牌无效")
        not_before = self._not_before.get(claims["sub"])
        if not_before is not None and claims["iat"] < not_before:
            raise unauthenticated("访问令牌已失效（账号状态、角色或密码已变更），请重新登录")
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
    "AnyPrincipal", "AppError", "CLIENT_ROLE", "CurrentPrincipal", "OptionalPrincipal", "PLATFORM_AUDIENCE",
    "Principal", "REGION_ROLES", "ROLES",
    "TokenVerifier", "bearer", "grpc_principal", "people_only",
]

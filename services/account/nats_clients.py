"""NATS credentials of matrix clients in delivery mode `nats` (DESIGN.md §6; the protocol:
docs/nats-client-protocol.md), and their revocation.

Issuing: a client, with a token of its account (client credentials), gets a NATS user: a key
pair made here (the seed shown once, in `creds`) or its own public key, and a user JWT signed
with a signing key of the CLIENTS account that allows its own subjects only
(`nats_estate.client_permissions`). The servers check it by themselves; we keep the public key.
An account holds at most ACCOUNT_NATS_CLIENT_KEYS_MAX live keys: one more revokes the oldest.

Revoking: every key of an account is revoked when its client secret is rotated or revoked, its
delivery leaves `nats`, or it is deregistered or closed. The servers learn it from the CLIENTS
account's JWT, signed again (operator signing key) with every revoked key and pushed by a SYS
user to `$SYS.REQ.CLAIMS.UPDATE`: they disconnect those users at once and refuse them after.
The push follows the revoking transaction's commit at once (`push_soon` wakes the pusher); the
pusher also pushes whenever more keys are revoked than the last push listed (another replica's
revocation, or a push lost while NATS was down), once at start, whenever its connection to NATS
comes back (a server restarted from an old resolver directory) and every REFRESH_S anyway.

A server takes whatever account JWT comes last, even one with an older `iat` and fewer
revocations (measured on 2.14.6), so pushes must never overtake one another: each locks the row
of the last push (FOR UPDATE; on SQLite, one process's lock and the next check), reads the whole
set, pushes it and records it. Its `iat` never goes below the last push's, so the resolver's
directory, which refuses an older JWT, keeps the newest too.

Nothing here logs a seed or a JWT."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import jwt as pyjwt
import nats
from sqlalchemy import func, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit import nats_jwt
from govmedia_kit.auth import CLIENT_ROLE, Principal, bearer
from govmedia_kit.bus import servers as server_list
from govmedia_kit.db import as_utc, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, unauthenticated
from govmedia_kit.nats_estate import CLIENT_CONNECTIONS, client_permissions, client_subjects, clients_account_jwt
from govmedia_kit.nats_jwt import Key
from govmedia_kit.runtime import Runtime, periodically

from .models import (
    RECEIVING, Account, NatsClientKey, NatsCredentials, NatsCredentialsIn, NatsRevocationPush, NatsSubjects,
    TokenRevocation,
)

log = logging.getLogger(__name__)

CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"
PUSH_ROW = "clients"
PUSH_TIMEOUT_S = 5.0
REFRESH_S = 300.0  # pushed again this often even when nothing changed
# A revocation is listed this many seconds past its time: a JWT that a replica whose clock runs
# ahead issued for the key just before is revoked too. Harmless: a revoked key is never issued again.
CLOCK_MARGIN_S = 300


# --- configuration (read once, at start) ---------------------------------------------

@dataclass(frozen=True)
class NatsClients:
    """What issuing and revoking need; None when ACCOUNT_NATS_* are not set (development
    without secure NATS: issuing answers 503 nats_not_configured)."""

    account: str  # the CLIENTS account's public key
    signing: Key  # a signing key of CLIENTS: signs the clients' user JWTs
    operator_signing: Key  # an operator signing key: signs the CLIENTS account JWT again
    system_creds: str  # a SYS user that may push account JWTs
    servers: tuple[str, ...]  # what clients connect to
    websocket: str | None
    bus_servers: tuple[str, ...]  # where the pusher reaches the servers (NATS_URL)
    max_keys: int
    ttl_s: int  # a user JWT's life; 0: no end

    @classmethod
    def from_settings(cls, cfg) -> "NatsClients | None":
        if not cfg.nats_clients_account:
            return None
        return cls(account=cfg.nats_clients_account, signing=_seed(cfg.nats_clients_signing_seed_file),
                   operator_signing=_seed(cfg.nats_operator_signing_seed_file), system_creds=cfg.nats_system_creds,
                   servers=tuple(server_list(cfg.nats_client_urls)), websocket=cfg.nats_client_websocket_url or None,
                   bus_servers=tuple(server_list(cfg.nats_url)), max_keys=cfg.nats_client_keys_max,
                   ttl_s=int(cfg.nats_client_creds_ttl_days * 86400))


def _seed(path: str) -> Key:
    return Key.of(Path(path).read_bytes().strip())


def configure(rt: Runtime) -> None:
    """At start: read the seed files (a missing one stops the start, not the first client)."""
    found = NatsClients.from_settings(rt.settings)
    rt.state["nats_clients"] = found
    if found is None:
        log.info("NATS client credentials not configured (ACCOUNT_NATS_CLIENTS_ACCOUNT unset): "
                 "delivery mode nats cannot get credentials here")
    else:
        log.info("NATS client credentials: CLIENTS account %s, signing key %s, clients told %s",
                 found.account, found.signing.public, ", ".join(found.servers))


def settings_of(rt: Runtime) -> NatsClients | None:
    return rt.state.get("nats_clients")


# --- issuing ---------------------------------------------------------------------------

def token_issued_at(authorization: str | None) -> int:
    """The `iat` of the bearer token the caller was just verified with (the transports pass it:
    another replica may not know yet that the token was revoked, this database does)."""
    return int(pyjwt.decode(bearer(authorization), options={"verify_signature": False}).get("iat", 0))


async def issue_credentials(rt: Runtime, who: Principal, data: NatsCredentialsIn, token_iat: int) -> NatsCredentials:
    """A NATS user for the caller's account (a client token): its own subjects only. 403
    client_required, 503 nats_not_configured, 422 invalid_public_key, 409 not_nats_delivery,
    409 public_key_used (a key revoked, or of another account: make a new one)."""
    if CLIENT_ROLE not in who.roles or not who.account_id:
        raise forbidden("client_required", "只有客户端（以客户端凭据获取的令牌）可以申领 NATS 凭据")
    cfg = settings_of(rt)
    if cfg is None:
        raise AppError(503, "nats_not_configured", "本环境未配置 NATS 客户端凭据签发")
    own = data.public_key
    if own is not None and not nats_jwt.is_public_user_key(own):
        raise invalid("invalid_public_key", "public_key 须为 NATS 用户公钥（以 U 开头的 56 位 nkey）",
                      [{"field": "public_key"}])
    made = None if own else Key.new("user")
    public_key = own or made.public
    now = utcnow()
    expires_at = now + timedelta(seconds=cfg.ttl_s) if cfg.ttl_s else None
    async with rt.unit_of_work() as s:
        # The account's row lock: two requests of one client cannot both pass the key limit.
        account = (await s.exec(select(Account).where(Account.id == who.account_id).with_for_update())).first()
        await _check_client(s, account, token_iat)
        key = await s.get(NatsClientKey, public_key)
        if key is not None and (key.account_id != account.id or key.revoked_at is not None):
            raise conflict("public_key_used", "该公钥已吊销或属于其他客户端，请生成新的密钥对",
                           {"public_key": public_key})
        replaced = 0
        if key is None:
            replaced = await _make_room(s, account.id, cfg.max_keys - 1, now)
            key = NatsClientKey(public_key=public_key, account_id=account.id)
        key.issued_at = now  # the same live key asked again: a new JWT for it
        s.add(key)
        publish, subscribe = client_permissions(account.id)
        token = nats_jwt.user_jwt(cfg.signing, public_key, account.id, publish=publish, subscribe=subscribe,
                                  issuer_account=cfg.account, connection_types=CLIENT_CONNECTIONS,
                                  expires_at=int(expires_at.timestamp()) if expires_at else None)
    if replaced:
        push_soon(rt)
    log.info("NATS credentials issued to account %s: user %s%s", account.id, public_key,
             f" ({replaced} oldest key(s) revoked)" if replaced else "")
    return NatsCredentials(
        account_id=account.id, public_key=public_key, jwt=token,
        creds=nats_jwt.creds(token, made.seed) if made else None, servers=list(cfg.servers),
        websocket=cfg.websocket, subjects=NatsSubjects(**client_subjects(account.id)), issued_at=now,
        expires_at=expires_at)


async def _check_client(s: AsyncSession, account: Account | None, token_iat: int) -> None:
    if account is None or account.status not in RECEIVING or account.client_secret_hash is None:
        raise AppError(401, "invalid_client", "客户端凭据无效")
    revoked = await s.get(TokenRevocation, account.id)
    if revoked is not None and token_iat < int(as_utc(revoked.not_before).timestamp()):
        raise unauthenticated("访问令牌已失效（客户端密钥已更换或吊销），请重新获取")
    if account.delivery_mode != "nats":
        raise conflict("not_nats_delivery", "该账号不以 NATS 方式接收推送", {"delivery_mode": account.delivery_mode})


async def _make_room(s: AsyncSession, account_id: str, keep: int, now: datetime) -> int:
    """Revoke the account's oldest live keys beyond `keep`; answers how many."""
    live = (await s.exec(select(NatsClientKey).where(NatsClientKey.account_id == account_id,
                                                     NatsClientKey.revoked_at.is_(None))
                         .order_by(NatsClientKey.issued_at.desc(), NatsClientKey.public_key))).all()
    for old in live[keep:]:
        old.revoked_at, old.reason = now, "replaced"
        s.add(old)
    return len(live[keep:])


# --- revoking ---------------------------------------------------------------------------

async def revoke_keys(s: AsyncSession, account_id: str, reason: str) -> int:
    """Revoke every live NATS key of the account, in the caller's transaction; after its
    commit the caller calls `push_soon`. Answers how many keys."""
    result = await s.execute(update(NatsClientKey)
                             .where(NatsClientKey.account_id == account_id, NatsClientKey.revoked_at.is_(None))
                             .values(revoked_at=utcnow(), reason=reason))
    if result.rowcount:
        log.info("NATS keys of account %s revoked (%s): %d", account_id, reason, result.rowcount)
    return result.rowcount


def push_soon(rt: Runtime) -> None:
    """After a revoking transaction committed: the pusher pushes now."""
    _pusher(rt).wake.set()


@dataclass
class _Pusher:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    nc: nats.NATS | None = None
    due: bool = True  # push without looking: at start, and when the connection comes back
    last_push: float = 0.0  # time.monotonic() of this process's last successful push
    failing: bool = False


def _pusher(rt: Runtime) -> _Pusher:
    found = rt.state.get("nats_pusher")
    if found is None:
        found = rt.state["nats_pusher"] = _Pusher()
    return found


def revocation_list(keys: list[NatsClientKey], ttl_s: int, now: datetime) -> dict[str, int]:
    """{public key: unix time} for the CLIENTS account JWT: a user JWT of that key issued at
    or before that time is refused. A key whose every JWT has expired is left out (the list
    travels in one NATS message, 1 MB at most)."""
    listed = {}
    for key in keys:
        issued = as_utc(key.issued_at)
        if ttl_s and issued + timedelta(seconds=ttl_s) < now:
            continue
        listed[key.public_key] = int(max(as_utc(key.revoked_at), issued).timestamp()) + CLOCK_MARGIN_S
    return listed


def _account_jwt(cfg: NatsClients, revocations: dict[str, int], iat: int) -> str:
    token = clients_account_jwt(cfg.operator_signing, cfg.account, cfg.signing.public, revocations)
    claims = nats_jwt.decode(token)
    if claims["iat"] >= iat:
        return token
    # This clock is behind the replica that pushed last: signed again with that push's iat.
    claims["iat"] = iat
    claims.pop("jti", None)
    return nats_jwt.encode(claims, cfg.operator_signing)


def _check_reply(data: bytes) -> None:
    body = json.loads(data or b"{}")
    answer = body.get("data") or body.get("error") or {}
    if answer.get("code") != 200:
        raise RuntimeError(f"NATS refused the CLIENTS account JWT: {answer.get('description') or answer}")


async def _connection(rt: Runtime, cfg: NatsClients, p: _Pusher) -> nats.NATS:
    if p.nc is not None and not p.nc.is_closed:
        return p.nc

    async def reconnected() -> None:  # a restarted server may hold an old CLIENTS JWT
        p.due = True
        p.wake.set()

    async def unreachable(exc: Exception) -> None:  # once per outage (nats-py retries by itself)
        if not p.failing:
            log.warning("NATS client revocations: the servers are unreachable for now: %s", exc or type(exc).__name__)
        p.failing = True

    p.nc = await nats.connect(servers=list(cfg.bus_servers), user_credentials=cfg.system_creds,
                              name="govmedia-account-revocations", reconnected_cb=reconnected, error_cb=unreachable,
                              allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=1,
                              ping_interval=5, max_outstanding_pings=3, connect_timeout=3)  # as the bus
    return p.nc


async def _revoked_count(s: AsyncSession) -> int:
    return (await s.exec(select(func.count()).select_from(NatsClientKey)
                         .where(NatsClientKey.revoked_at.is_not(None)))).one()


async def push_revocations(rt: Runtime) -> int:
    """Sign the CLIENTS account again with every revoked key and push it to the servers,
    after any push in hand (module docstring). Answers how many keys it lists."""
    cfg, p = settings_of(rt), _pusher(rt)
    nc = await _connection(rt, cfg, p)
    async with p.lock:
        async with rt.db.transaction() as s:
            row = (await s.exec(select(NatsRevocationPush).where(NatsRevocationPush.id == PUSH_ROW)
                                .with_for_update())).first() or NatsRevocationPush(id=PUSH_ROW)
            now = utcnow()
            count = await _revoked_count(s)
            stmt = select(NatsClientKey).where(NatsClientKey.revoked_at.is_not(None))
            if cfg.ttl_s:
                stmt = stmt.where(NatsClientKey.issued_at >= now - timedelta(seconds=cfg.ttl_s))
            revocations = revocation_list(list((await s.exec(stmt)).all()), cfg.ttl_s, now)
            iat = max(int(time.time()), row.iat)
            reply = await nc.request(CLAIMS_UPDATE, _account_jwt(cfg, revocations, iat).encode(),
                                     timeout=PUSH_TIMEOUT_S)
            _check_reply(reply.data)
            row.revoked_count, row.iat, row.pushed_at = count, iat, now
            s.add(row)
    p.due, p.last_push = False, time.monotonic()
    return len(revocations)


async def _push_round(rt: Runtime) -> None:
    p = _pusher(rt)
    if not p.due and time.monotonic() - p.last_push < REFRESH_S:
        async with rt.db.session() as s:
            row = await s.get(NatsRevocationPush, PUSH_ROW)
            if row is not None and row.revoked_count == await _revoked_count(s):
                return  # the last push, by any replica, listed every revoked key
    try:
        listed = await push_revocations(rt)
    except Exception as exc:  # NATS down, or refusing: the next round tries again
        p.due = True
        if not p.failing:
            log.warning("NATS client revocations not pushed (will retry every %.0f s): %s",
                        rt.settings.nats_push_check_s, exc or type(exc).__name__)
        p.failing = True
        return
    log.log(logging.WARNING if p.failing else logging.INFO,
            "CLIENTS account pushed to NATS with %d revoked client keys", listed)
    p.failing = False


async def pusher(rt: Runtime, stop: asyncio.Event) -> None:
    """A worker of every replica: pushes the revocations (module docstring)."""
    if settings_of(rt) is None:
        return
    p = _pusher(rt)
    try:
        await periodically(lambda: _push_round(rt), rt.settings.nats_push_check_s, stop, "NATS revocation push",
                           wake=p.wake)
    finally:
        if p.nc is not None and not p.nc.is_closed:
            await p.nc.close()


__all__ = ["NatsClients", "configure", "issue_credentials", "push_revocations", "push_soon", "pusher",
           "revocation_list", "revoke_keys", "token_issued_at"]

"""Sign-in use cases: tokens (password, refresh, client credentials), refresh token
revocation, failed sign-in throttling, signing key rotation and client secret rotation.
Called by REST (signin_rest.py) and gRPC (grpc_api.py) alike.

Nothing here logs a password, a secret or a token."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import as_utc, new_id, utcnow
from govmedia_kit.errors import AppError, conflict, not_found
from govmedia_kit.runtime import Runtime, periodically

from .models import Account, SigningKey, User
from .regions import path_of, unit_path
from .signin_models import (
    ClientSecretIssued, KeyPublic, KeyRotated, RefreshToken, SigninFailure, SigningKeyRetirement, TokenIssued,
)
from .tokens import (
    KeyRing, RingVerifier, hash_client_secret, is_legacy_client_secret, load_keyring, new_signing_key, passwords,
    verify_client_secret,
)

log = logging.getLogger(__name__)

REFRESH_TOKEN_TTL = timedelta(days=14)
DEFAULT_KEY_GRACE_S = 7200  # longer than the access token lifetime (1 h)
MAX_USERNAME, MAX_PASSWORD, MAX_OPAQUE = 64, 200, 200


@dataclass(frozen=True)
class ThrottlePolicy:
    slow_after: int  # consecutive failures after which each attempt must wait
    lock_after: int  # consecutive failures after which sign-in is locked
    base_delay_s: int  # the wait after `slow_after` failures; doubles with each further failure
    max_delay_s: int
    lock_s: int
    forget_s: int  # a streak with no failure for this long starts over

    def delay_s(self, failures: int) -> int:
        return min(self.base_delay_s * 2 ** (failures - self.slow_after), self.max_delay_s)


# Per username: 5 failures slow down (5 s, 10 s, 20 s, 40 s, 80 s), 10 lock for 15 minutes, and
# after a lock each further failure locks again until a success resets the streak.
USER_POLICY = ThrottlePolicy(slow_after=5, lock_after=10, base_delay_s=5, max_delay_s=300, lock_s=900,
                             forget_s=86400)
# Per client address: higher, since a whole office may sign in through one NAT address; a
# success does not reset it (password spraying from one address succeeds now and then).
ADDRESS_POLICY = ThrottlePolicy(slow_after=20, lock_after=100, base_delay_s=5, max_delay_s=300, lock_s=900,
                                forget_s=3600)


class ThrottledError(AppError):
    """429 with the seconds to wait; REST answers them as `Retry-After`."""

    def __init__(self, code: str, message: str, retry_after: int):
        super().__init__(429, code, message, {"retry_after_s": retry_after})
        self.retry_after = retry_after


def invalid_grant(message: str = "用户名或密码错误") -> AppError:
    return AppError(401, "invalid_grant", message)


def invalid_request(message: str) -> AppError:
    return AppError(400, "invalid_request", message)


def keyring(rt: Runtime) -> KeyRing:
    return rt.state["keyring"]


def key_grace_s(rt: Runtime) -> int:
    return int(getattr(rt.settings, "key_grace_s", DEFAULT_KEY_GRACE_S))


def peer_host(peer: str) -> str:
    """The address in a gRPC peer string: `ipv4:10.0.0.7:51234`, `ipv6:[::1]:51234`."""
    kind, _, rest = (peer or "").partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _user_claims(s: AsyncSession, user: User) -> dict:
    """`region`: the materialised path of the user's unit's region, how far ops, the regulator
    and the supervisor reach (regions.py)."""
    return {"sub": user.id, "name": user.username, "unit": user.unit_id, "roles": user.roles,
            "region": await unit_path(s, user.unit_id) or ""}


# --- tokens --------------------------------------------------------------------

async def issue_token(rt: Runtime, grant_type: str, username: str = "", password: str = "",
                      client_id: str = "", client_secret: str = "", refresh_token: str = "",
                      address: str = "") -> TokenIssued:
    """The token endpoint (RFC 6749): `password` and `refresh_token` for people,
    `client_credentials` for the matrix clients of stream accounts."""
    if grant_type == "password":
        claims, refresh = await _password_grant(rt, username, password, address)
    elif grant_type == "refresh_token":
        claims, refresh = await _refresh_grant(rt, refresh_token)
    elif grant_type == "client_credentials":
        claims, refresh = await _client_grant(rt, client_id, client_secret), None
    else:
        raise AppError(400, "unsupported_grant_type", "仅支持 password、refresh_token 与 client_credentials")
    token, ttl = keyring(rt).sign(claims, rt.settings.token_issuer)
    return TokenIssued(access_token=token, expires_in=ttl, refresh_token=refresh,
                       refresh_expires_in=int(REFRESH_TOKEN_TTL.total_seconds()) if refresh else None)


async def _password_grant(rt: Runtime, username: str, password: str, address: str) -> tuple[dict, str]:
    if not username or not password:
        raise invalid_request("password 授权须提供 username 与 password")
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        raise AppError(422, "validation_failed", "用户名或密码过长",
                       [{"field": "username" if len(username) > MAX_USERNAME else "password"}])
    now = utcnow()
    user_key, addr_key = f"user:{username}", (f"addr:{address}" if address else "")
    locked_now: list[str] = []
    async with rt.db.transaction() as s:
        # The username's row stays locked while the password is checked: concurrent guesses
        # at one username queue up and each one sees the streak of the ones before.
        user_row = await _locked_row(s, user_key)
        addr_row = await s.get(SigninFailure, addr_key) if addr_key else None
        _refuse_if_held(user_row, USER_POLICY, now)
        _refuse_if_held(addr_row, ADDRESS_POLICY, now)
        user = (await s.exec(select(User).where(User.username == username))).first()
        ok = await asyncio.to_thread(passwords(rt).verify, user.password_hash if user else None, password)
        if ok and user and user.active:
            await s.delete(user_row)  # a success ends the streak
            if passwords(rt).needs_rehash(user.password_hash):  # ACCOUNT_PASSWORD_HASH_* changed
                user.password_hash = await asyncio.to_thread(passwords(rt).hash, password)
                s.add(user)
            return await _user_claims(s, user), await _new_refresh_token(s, user.id, new_id(), now)
        if _count_failure(user_row, USER_POLICY, now):
            locked_now.append(f"user={username if user else '<unknown>'}")
        if addr_key:
            addr_row = addr_row or SigninFailure(subject=addr_key)
            if _count_failure(addr_row, ADDRESS_POLICY, now):
                locked_now.append(f"address={address}")
            s.add(addr_row)
    if locked_now:
        log.warning("sign-in locked for %d s after repeated failures: %s", USER_POLICY.lock_s, " ".join(locked_now))
    raise invalid_grant()


async def _locked_row(s: AsyncSession, subject: str) -> SigninFailure:
    """The failure row of `subject`, created if missing, locked for this transaction
    (FOR UPDATE on PostgreSQL; SQLite's transaction already holds the write lock)."""
    row = (await s.exec(select(SigninFailure).where(SigninFailure.subject == subject).with_for_update())).first()
    if row is None:
        dialect = (await s.connection()).dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        await s.execute(insert(SigninFailure).values(subject=subject, failures=0)
                        .on_conflict_do_nothing(index_elements=["subject"]))
        row = (await s.exec(select(SigninFailure).where(SigninFailure.subject == subject)
                            .with_for_update().execution_options(populate_existing=True))).one()
    return row


def _streak(row: SigninFailure | None, policy: ThrottlePolicy, now: datetime) -> int:
    if row is None or row.last_failed_at is None:
        return 0
    if now - as_utc(row.last_failed_at) > timedelta(seconds=policy.forget_s) and not _locked(row, now):
        return 0
    return row.failures


def _locked(row: SigninFailure, now: datetime) -> bool:
    return row.locked_until is not None and as_utc(row.locked_until) > now


def _refuse_if_held(row: SigninFailure | None, policy: ThrottlePolicy, now: datetime) -> None:
    """Refuse before the password is even checked: the same answer for every username."""
    if row is None:
        return
    if _locked(row, now):
        wait = math.ceil((as_utc(row.locked_until) - now).total_seconds())
        raise ThrottledError("account_locked", f"登录失败次数过多，已暂时锁定，请 {wait} 秒后再试", wait)
    failures = _streak(row, policy, now)
    if policy.slow_after <= failures < policy.lock_after:
        ready_at = as_utc(row.last_failed_at) + timedelta(seconds=policy.delay_s(failures))
        if now < ready_at:
            wait = math.ceil((ready_at - now).total_seconds())
            raise ThrottledError("signin_throttled", f"登录尝试过于频繁，请 {wait} 秒后再试", wait)


def _count_failure(row: SigninFailure, policy: ThrottlePolicy, now: datetime) -> bool:
    """Add one failure to the streak; True when this failure starts a lock."""
    row.failures = _streak(row, policy, now) + 1
    row.last_failed_at = now
    if row.failures >= policy.lock_after:
        row.locked_until = now + timedelta(seconds=policy.lock_s)
        return True
    return False


async def _new_refresh_token(s: AsyncSession, user_id: str, family_id: str, now: datetime) -> str:
    token = secrets.token_urlsafe(32)
    s.add(RefreshToken(token_hash=_sha256(token), family_id=family_id, user_id=user_id, issued_at=now,
                       expires_at=now + REFRESH_TOKEN_TTL))
    await s.flush()
    return token


async def _revoke_family(s: AsyncSession, family_id: str, reason: str, now: datetime) -> None:
    await s.execute(update(RefreshToken)
                    .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=now, revoked_reason=reason))


async def _refresh_grant(rt: Runtime, refresh_token: str) -> tuple[dict, str]:
    """Rotation: each refresh token works once. Presenting one that was already rotated
    means two parties hold it (one stole it): the whole session ends."""
    if not refresh_token:
        raise invalid_request("refresh_token 授权须提供 refresh_token")
    if len(refresh_token) > MAX_OPAQUE:
        raise invalid_grant("刷新令牌无效或已过期")
    now = utcnow()
    result: tuple[dict, str] | None = None
    async with rt.db.transaction() as s:
        row = (await s.exec(select(RefreshToken).where(RefreshToken.token_hash == _sha256(refresh_token))
                            .with_for_update())).first()
        if row is None or (row.revoked_at is None and as_utc(row.expires_at) <= now):
            pass
        elif row.revoked_at is not None:
            if row.revoked_reason == "rotated":
                await _revoke_family(s, row.family_id, "reuse_detected", now)
                log.warning("refresh token reuse detected: session of user %s ended", row.user_id)
        else:
            user = await s.get(User, row.user_id)
            if user is None or not user.active:
                await _revoke_family(s, row.family_id, "user_inactive", now)
            else:
                row.revoked_at, row.revoked_reason = now, "rotated"
                s.add(row)
                result = await _user_claims(s, user), await _new_refresh_token(s, user.id, row.family_id, now)
    if result is None:
        raise invalid_grant("刷新令牌无效或已过期")
    return result


async def _client_grant(rt: Runtime, client_id: str, client_secret: str) -> dict:
    """A stream account's client: the token reaches its own account and unit only."""
    if len(client_id) > MAX_OPAQUE or len(client_secret) > MAX_OPAQUE:
        raise AppError(401, "invalid_client", "客户端凭据无效")
    async with rt.db.session() as s:
        account = await s.get(Account, client_id) if client_id else None
    stored = account.client_secret_hash if account else None
    ok = await asyncio.to_thread(verify_client_secret, stored, client_secret, passwords(rt))
    if not ok or not account or account.status != "active":
        raise AppError(401, "invalid_client", "客户端凭据无效")
    if is_legacy_client_secret(stored):  # kept as SHA-256 from now on
        async with rt.db.transaction() as s:
            await s.execute(update(Account).where(Account.id == account.id, Account.client_secret_hash == stored)
                            .values(client_secret_hash=hash_client_secret(client_secret)))
    return {"sub": account.id, "name": account.handle, "unit": account.unit_id, "roles": [CLIENT_ROLE],
            "account": account.id}


async def revoke_token(rt: Runtime, token: str, token_type_hint: str = "") -> None:
    """RFC 7009: revoking a refresh token ends its session (the whole family). An unknown
    token is answered the same way as a known one. Access tokens are not revocable: they
    are verified offline everywhere and end within their hour."""
    if not token:
        raise invalid_request("缺少 token 参数")
    if token_type_hint == "access_token" or token.count(".") == 2:
        raise AppError(400, "unsupported_token_type", "访问令牌无法撤销，将在有效期（1 小时）内自然失效")
    if len(token) > MAX_OPAQUE:
        return
    now = utcnow()
    async with rt.db.transaction() as s:
        row = (await s.exec(select(RefreshToken).where(RefreshToken.token_hash == _sha256(token)))).first()
        if row is not None:
            await _revoke_family(s, row.family_id, "revoked", now)


async def revoke_user_sessions(s: AsyncSession, user_id: str, reason: str = "user_inactive") -> None:
    """Ends every refresh session of a user, in the caller's transaction (deactivation,
    password change). The refresh grant refuses an inactive user anyway."""
    await s.execute(update(RefreshToken)
                    .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
                    .values(revoked_at=utcnow(), revoked_reason=reason))


# --- signing keys ----------------------------------------------------------------

def publish_keyring(rt: Runtime, ring: KeyRing) -> None:
    """Make `ring` the process's signing keys and its verifier's keys, at once."""
    rt.state["keyring"] = ring
    verifier = rt.verifier
    if isinstance(verifier, RingVerifier):
        verifier.use(ring)
        return
    verifier = RingVerifier(ring, rt.settings.token_issuer, lambda: reload_keyring(rt))
    rt.verifier = verifier
    if rt.app is not None:
        rt.app.state.verifier = verifier  # REST reads the verifier from the app


async def start_keyring(rt: Runtime) -> KeyRing:
    """On start: load (or create) the keys and install them. Replaces the static JWKS verifier."""
    async with rt.db.transaction() as s:
        ring = await load_keyring(s)
    publish_keyring(rt, ring)
    return ring


async def reload_keyring(rt: Runtime) -> KeyRing:
    """Pick up keys another replica rotated in."""
    async with rt.db.session() as s:
        ring = await load_keyring(s)
        await s.commit()  # load_keyring creates the first key of an empty database
    current = rt.state.get("keyring")
    if current is None or not current.same_keys(ring):
        publish_keyring(rt, ring)
        return ring
    return current


def _key_views(ring: KeyRing) -> list[KeyPublic]:
    published = set(ring.published_kids())
    return [KeyPublic(kid=k.kid, active=k.kid == ring.active_kid, published=k.kid in published,
                      created_at=k.created_at, retire_at=k.retire_at)
            for k in sorted(ring.keys.values(), key=lambda k: k.created_at)]


async def list_keys(rt: Runtime, who: Principal) -> list[KeyPublic]:
    who.require_province("ops")
    return _key_views(await reload_keyring(rt))


async def rotate_keys(rt: Runtime, who: Principal, grace_s: int | None = None) -> KeyRotated:
    """A new key signs from now on; the previous one stays published for `grace_s` (default:
    the `key_grace_s` setting) so tokens it signed keep verifying. Keys past their grace
    lose their private half here."""
    who.require_province("ops")
    grace = timedelta(seconds=key_grace_s(rt) if grace_s is None else grace_s)
    now = utcnow()
    async with rt.unit_of_work() as s:
        keys = list((await s.exec(select(SigningKey).with_for_update())).all())
        retirements = {r.kid: r for r in (await s.exec(select(SigningKeyRetirement))).all()}
        for key in keys:
            if key.active:
                key.active = False
                s.add(key)
                s.add(SigningKeyRetirement(kid=key.kid, superseded_at=now, retire_at=now + grace,
                                           rotated_by=who.subject[:64]))
            elif key.kid in retirements and as_utc(retirements[key.kid].retire_at) <= now and key.private_pem:
                key.private_pem = ""
                s.add(key)
        new_key = new_signing_key()
        s.add(new_key)
        await s.flush()
        ring = await load_keyring(s)
    publish_keyring(rt, ring)
    log.info("signing key rotated by %s: new kid %s, previous keys published for %d s",
             who.subject, new_key.kid, int(grace.total_seconds()))
    return KeyRotated(kid=ring.active_kid, keys=_key_views(ring))


# --- client credentials of stream accounts ---------------------------------------

CREDENTIAL_ADMINS = ("ops", "regulator")


async def _stream_account(s: AsyncSession, who: Principal, account_id: str) -> Account:
    """A stream account of the caller's region subtree."""
    account = (await s.exec(select(Account).where(Account.id == account_id).with_for_update())).first()
    if account is None:
        raise not_found("account", account_id)
    who.require_unit(account.unit_id, await path_of(s, account.region_id), cross_unit_roles=CREDENTIAL_ADMINS)
    if account.delivery_mode != "stream":
        raise conflict("not_stream_account", "只有以流式方式接收的账号才有客户端凭据", {"id": account_id})
    return account


async def rotate_client_secret(rt: Runtime, who: Principal, account_id: str) -> ClientSecretIssued:
    """A new secret replaces the old one at once (the old one stops working); shown once."""
    who.require(*CREDENTIAL_ADMINS)
    secret = secrets.token_urlsafe(32)
    secret_hash = hash_client_secret(secret)
    now = utcnow()
    async with rt.unit_of_work() as s:
        account = await _stream_account(s, who, account_id)
        account.client_secret_hash, account.updated_at = secret_hash, now
        s.add(account)
    log.info("client secret of account %s rotated by %s", account_id, who.subject)
    return ClientSecretIssued(client_id=account_id, client_secret=secret, rotated_at=now)


async def revoke_client_secret(rt: Runtime, who: Principal, account_id: str) -> None:
    """The client can no longer get tokens; tokens already issued end within their hour."""
    who.require(*CREDENTIAL_ADMINS)
    async with rt.unit_of_work() as s:
        account = await _stream_account(s, who, account_id)
        account.client_secret_hash, account.updated_at = None, utcnow()
        s.add(account)
    log.info("client secret of account %s revoked by %s", account_id, who.subject)


# --- housekeeping ------------------------------------------------------------------

async def prune(rt: Runtime) -> None:
    """Forget streaks nobody continued and refresh tokens long expired."""
    now = utcnow()
    oldest = now - timedelta(seconds=max(USER_POLICY.forget_s, ADDRESS_POLICY.forget_s))
    async with rt.db.transaction() as s:
        await s.execute(delete(SigninFailure).where(
            SigninFailure.last_failed_at < oldest,
            (SigninFailure.locked_until.is_(None)) | (SigninFailure.locked_until < now)))
        await s.execute(delete(RefreshToken).where(RefreshToken.expires_at < now - timedelta(days=1)))


async def signin_worker(rt: Runtime, stop: asyncio.Event, every_s: float = 30) -> None:
    """Background task of every replica: picks up keys rotated elsewhere, prunes."""

    async def housekeeping() -> None:
        await reload_keyring(rt)
        await prune(rt)

    await periodically(housekeeping, every_s, stop, "sign-in housekeeping", run_first=False)

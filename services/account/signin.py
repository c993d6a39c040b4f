"""Sign-in use cases: tokens (password, refresh, client credentials), refresh token
revocation, failed sign-in throttling, the bounded pool that checks passwords, the second
factor (TOTP), signing key rotation and client secret rotation.
Called by REST (signin_rest.py) and gRPC (grpc_api.py) alike.

Nothing here logs a password, a secret or a token."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, update
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from govmedia_kit.auth import CLIENT_ROLE, Principal
from govmedia_kit.db import as_utc, new_id, utcnow
from govmedia_kit.errors import AppError, conflict, forbidden, invalid, not_found
from govmedia_kit.runtime import Runtime, periodically

from .models import CLIENT_MODES, Account, SigningKey, User
from . import nats_clients
from .regions import path_of, unit_path
from . import totp as otp
from .signin_models import (
    ClientSecretIssued, KeyPublic, KeyRotated, RefreshToken, SigninFailure, SigningKeyRetirement, TokenIssued,
    TotpEnrolment, TotpStatus, UserTotp,
)
from .tokens import (
    KeyRing, RingVerifier, hash_client_secret, is_legacy_client_secret, key_sealer, load_keyring, new_signing_key,
    passwords, revoke_subject, verify_client_secret,
)

log = logging.getLogger(__name__)

REFRESH_TOKEN_TTL = timedelta(days=14)
DEFAULT_KEY_GRACE_S = 7200  # longer than the access token lifetime (1 h)
MAX_USERNAME, MAX_PASSWORD, MAX_OPAQUE = 64, 200, 200


@dataclass(frozen=True)
class ThrottlePolicy:
    slow_after: int  # consecutive failures after which each attempt must wait
    lock_after: int | None  # consecutive failures after which sign-in is locked; None: never locked
    base_delay_s: int  # the wait after `slow_after` failures; doubles with each further failure
    max_delay_s: int
    lock_s: int
    forget_s: int  # a streak with no failure for this long starts over

    def delay_s(self, failures: int) -> int:
        return min(self.base_delay_s * 2 ** min(failures - self.slow_after, 16), self.max_delay_s)


# Per username: 5 failures slow down (5 s, 10 s, 20 s, 40 s, 80 s), 10 lock for 15 minutes, and
# after a lock each further failure locks again until a success resets the streak.
USER_POLICY = ThrottlePolicy(slow_after=5, lock_after=10, base_delay_s=5, max_delay_s=300, lock_s=900,
                             forget_s=86400)
# Per client address (the trusted client address, govmedia_kit/client_address.py): an address
# is never locked, since a whole office, or a city's 政务外网 exit, signs in through one address
# and one attacker behind it must not lock everyone out. After 20 failures in a streak the
# address is slowed: its failed attempts are answered `429 signin_throttled` with Retry-After
# (5 s doubling to 300 s) and logged, so an operator can block it at the edge; a correct
# password for a username that is not held still signs in. A success does not reset it
# (password spraying from one address succeeds now and then).
ADDRESS_POLICY = ThrottlePolicy(slow_after=20, lock_after=None, base_delay_s=5, max_delay_s=300, lock_s=0,
                                forget_s=3600)


class ThrottledError(AppError):
    """429 with the seconds to wait; REST answers them as `Retry-After`, gRPC as the
    `retry-after` trailer."""

    def __init__(self, code: str, message: str, retry_after: int):
        super().__init__(429, code, message, {"retry_after_s": retry_after},
                         headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


def invalid_grant(message: str = "用户名或密码错误") -> AppError:
    return AppError(401, "invalid_grant", message)


def invalid_request(message: str) -> AppError:
    return AppError(400, "invalid_request", message)


def keyring(rt: Runtime) -> KeyRing:
    return rt.state["keyring"]


def key_grace_s(rt: Runtime) -> int:
    return int(getattr(rt.settings, "key_grace_s", DEFAULT_KEY_GRACE_S))


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _user_claims(s: AsyncSession, user: User) -> dict:
    """`region`: the materialised path of the user's unit's region, how far ops, the regulator
    and the supervisor reach (regions.py)."""
    return {"sub": user.id, "name": user.username, "unit": user.unit_id, "roles": user.roles,
            "region": await unit_path(s, user.unit_id) or ""}


# --- the bounded pool of password checks -------------------------------------------

# What one process needs besides its password checks (measured: bench/signin_memory.py).
DEFAULT_MEMORY_RESERVE_MIB = 192
MAX_HASH_SLOTS = 16
QUEUE_PER_SLOT = 8  # callers that may wait for a slot, per slot


def container_memory_limit_mib() -> int | None:
    """The memory limit of this container (cgroup v2 `memory.max`, or v1), None when unlimited."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 50:  # v1 says "no limit" with a huge number
            return int(raw) // (1 << 20)
    return None


def hash_slots_for(memory_limit_mib: int | None, hash_memory_kib: int, reserve_mib: int) -> int:
    """How many Argon2 hashes may run at once within the memory limit: (limit − reserve) over
    one hash's memory (plus 1 MiB for its thread), at least 1, at most 16. Without a known
    limit: 4 (the CPU, not memory, is then what runs out first)."""
    if not memory_limit_mib:
        return 4
    per_hash = hash_memory_kib / 1024 + 1
    return max(1, min(MAX_HASH_SLOTS, int((memory_limit_mib - reserve_mib) // per_hash)))


@dataclass
class HashPool:
    """Argon2 at 64 MiB a check: at most `slots` checks run at once, each in a thread of the
    pool's own (so memory stays within slots × 64 MiB whatever the number of CPUs), and never
    inside a database transaction. A caller waits at most `queue_s` for a slot, and at most
    `8 × slots` callers wait (what the slots can serve within a few seconds); beyond that
    `429 signin_busy` with Retry-After. A waiting caller holds no hash memory and no connection."""

    slots: int
    queue_s: float
    _sem: asyncio.Semaphore = field(init=False)
    _threads: concurrent.futures.ThreadPoolExecutor = field(init=False)
    waiting: int = 0
    in_use: int = 0

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.slots)
        self._threads = concurrent.futures.ThreadPoolExecutor(self.slots, thread_name_prefix="password-hash")

    def _busy(self) -> ThrottledError:
        wait = max(1, math.ceil((self.waiting + 1) / self.slots))
        return ThrottledError("signin_busy", f"登录请求较多，请 {wait} 秒后再试", wait)

    @contextlib.asynccontextmanager
    async def slot(self):
        if self.waiting >= QUEUE_PER_SLOT * self.slots:
            raise self._busy()
        if self._sem.locked():  # every slot taken: wait in the queue, briefly
            if self.queue_s <= 0:
                raise self._busy()
            self.waiting += 1
            try:
                await asyncio.wait_for(self._sem.acquire(), timeout=self.queue_s)
            except asyncio.TimeoutError:
                raise self._busy() from None
            finally:
                self.waiting -= 1
        else:
            await self._sem.acquire()  # a free slot: taken at once
        self.in_use += 1
        try:
            yield self
        finally:
            self.in_use -= 1
            self._sem.release()

    async def run(self, fn, *args):
        """Run `fn` (a hash or a check) on the pool's threads; call within `slot()`."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, fn, *args)


async def hash_password(rt: Runtime, password: str) -> str:
    """A new password's hash (creating a user, a reset): in the pool, like every Argon2 of the
    service, off the event loop and outside any transaction."""
    pool = hash_pool(rt)
    async with pool.slot():
        return await pool.run(passwords(rt).hash, password)


def hash_pool(rt: Runtime) -> HashPool:
    found = rt.state.get("hash_pool")
    if found is None:
        cfg = rt.settings
        slots = getattr(cfg, "password_hash_slots", 0) or hash_slots_for(
            getattr(cfg, "memory_limit_mib", 0) or container_memory_limit_mib(),
            getattr(cfg, "password_hash_memory_kib", 65536),
            getattr(cfg, "memory_reserve_mib", DEFAULT_MEMORY_RESERVE_MIB))
        found = rt.state["hash_pool"] = HashPool(slots, float(getattr(cfg, "password_hash_queue_s", 5.0)))
        log.info("password checks: at most %d at once, a sign-in waits at most %.1f s for one", slots,
                 found.queue_s)
    return found


# --- tokens --------------------------------------------------------------------

async def issue_token(rt: Runtime, grant_type: str, username: str = "", password: str = "",
                      client_id: str = "", client_secret: str = "", refresh_token: str = "",
                      address: str = "", otp_code: str = "") -> TokenIssued:
    """The token endpoint (RFC 6749): `password` (with `otp` when the user has a second
    factor) and `refresh_token` for people, `client_credentials` for the matrix clients of
    stream and nats accounts."""
    if grant_type == "password":
        claims, refresh = await _password_grant(rt, username, password, address, otp_code)
    elif grant_type == "refresh_token":
        claims, refresh = await _refresh_grant(rt, refresh_token)
    elif grant_type == "client_credentials":
        claims, refresh = await _client_grant(rt, client_id, client_secret), None
    else:
        raise AppError(400, "unsupported_grant_type", "仅支持 password、refresh_token 与 client_credentials")
    token, ttl = keyring(rt).sign(claims, rt.settings.token_issuer)
    return TokenIssued(access_token=token, expires_in=ttl, refresh_token=refresh,
                       refresh_expires_in=int(REFRESH_TOKEN_TTL.total_seconds()) if refresh else None)


@dataclass
class _Attempt:
    user_id: str | None
    stored_hash: str | None
    active: bool
    locks: bool  # this attempt, if it fails, is the one that locks the username


async def _password_grant(rt: Runtime, username: str, password: str, address: str,
                          otp_code: str = "") -> tuple[dict, str]:
    """1. A read: a username held by its streak is refused at once (no slot, no hash).
    2. A slot of the hash pool (or 429 `signin_busy`).
    3. A short transaction counts the attempt as a failure in advance, under the username's
       row lock, so concurrent guesses at one username each see the ones before.
    4. The password is checked in the pool, outside any transaction.
    5. A short transaction records the outcome: a success (and second factor) ends the
       streak; a failure stays counted, and counts against the client address too."""
    if not username or not password:
        raise invalid_request("password 授权须提供 username 与 password")
    if len(username) > MAX_USERNAME or len(password) > MAX_PASSWORD:
        raise AppError(422, "validation_failed", "用户名或密码过长",
                       [{"field": "username" if len(username) > MAX_USERNAME else "password"}])
    if len(otp_code) > 16:
        raise AppError(422, "validation_failed", "动态验证码过长", [{"field": "otp"}])
    user_key = f"user:{username}"
    async with rt.db.session() as s:
        _refuse_if_held(await s.get(SigninFailure, user_key), USER_POLICY, utcnow())
    pool = hash_pool(rt)
    async with pool.slot():
        attempt = await _reserve_attempt(rt, username, user_key)
        hasher = passwords(rt)
        ok = await pool.run(hasher.verify, attempt.stored_hash, password)
        new_hash = None
        if ok and attempt.active and hasher.needs_rehash(attempt.stored_hash):  # ACCOUNT_PASSWORD_HASH_* changed
            new_hash = await pool.run(hasher.hash, password)
    if ok and attempt.active:
        return await _signed_in(rt, attempt, user_key, otp_code, new_hash, address)
    await _failed(rt, username if attempt.user_id else "<unknown>", attempt.locks, address)
    raise AssertionError("unreachable")  # _failed raises


async def _reserve_attempt(rt: Runtime, username: str, user_key: str) -> _Attempt:
    now = utcnow()
    async with rt.db.transaction() as s:
        row = await _locked_row(s, user_key)
        _refuse_if_held(row, USER_POLICY, now)
        locks = _count_failure(row, USER_POLICY, now)
        s.add(row)
        user = (await s.exec(select(User).where(User.username == username))).first()
        return _Attempt(user.id if user else None, user.password_hash if user else None,
                        bool(user and user.active), locks)


async def _signed_in(rt: Runtime, attempt: _Attempt, user_key: str, otp_code: str, new_hash: str | None,
                     address: str) -> tuple[dict, str]:
    now = utcnow()
    async with rt.db.transaction() as s:
        user = await s.get(User, attempt.user_id)
        if user is None or not user.active or user.password_hash != attempt.stored_hash:
            # deactivated, or the password was reset, while the hash was checked
            refused: AppError | None = invalid_grant()
        else:
            refused = await _second_factor(rt, s, user, otp_code, now)
        if refused is None or refused.code == "totp_enrolment_required":  # the password was right
            await s.execute(delete(SigninFailure).where(SigninFailure.subject == user_key))  # ends the streak
        if refused is None:
            if new_hash:
                user.password_hash = new_hash
                s.add(user)
            return await _user_claims(s, user), await _new_refresh_token(s, user.id, new_id(), now)
    raise refused  # after the transaction kept its writes (the code's step, the ticket)


# --- the second factor (TOTP) -------------------------------------------------------

TOTP_ISSUER = "政务新媒体平台"
ENROLMENT_TICKET_TTL = timedelta(minutes=10)
PENDING_TRIES = 5


def totp_required_roles(rt: Runtime) -> frozenset[str]:
    """Roles that must sign in with a second factor: ops and regulator in production, always;
    `ACCOUNT_TOTP_REQUIRED_ROLES` (comma-separated) adds roles, in any environment."""
    cfg = rt.settings
    extra = getattr(cfg, "totp_required_roles", "") or ""
    roles = {r.strip() for r in extra.split(",") if r.strip()}
    if cfg.production:
        roles |= {"ops", "regulator"}
    return frozenset(roles)


async def _lacks_required_totp(rt: Runtime, s: AsyncSession, user: User) -> bool:
    if not totp_required_roles(rt) & set(user.roles):
        return False
    row = await s.get(UserTotp, user.id)
    return row is None or row.confirmed_at is None


def _seal_secret(user_id: str, secret: str) -> str:
    return key_sealer().seal(f"totp:{user_id}", secret)


def _open_secret(row: UserTotp) -> str:
    return key_sealer().open(f"totp:{row.user_id}", row.secret_sealed or "")


async def _second_factor(rt: Runtime, s: AsyncSession, user: User, code: str, now: datetime) -> AppError | None:
    """None when the user may have a token. With a confirmed TOTP: the code of the current
    step (±1), never one already used. Without, for a role that requires it: 403 with an
    enrolment ticket, good only for `POST /v1/auth/totp/enrol` and `/confirm`."""
    row = await s.get(UserTotp, user.id, with_for_update=True)
    if row is not None and row.confirmed_at is not None:
        if not code:
            return AppError(401, "totp_required", "此账号已启用动态验证码：请同时提交 otp（验证器上的 6 位数字）")
        step = otp.matching_step(_open_secret(row), code)
        if step is None or (row.last_step is not None and step <= row.last_step):
            return AppError(401, "invalid_totp", "动态验证码错误，或已使用过（每个验证码只能使用一次）")
        row.last_step, row.updated_at = step, now
        s.add(row)
        return None
    required = totp_required_roles(rt) & set(user.roles)
    if not required:
        return None
    ticket = secrets.token_urlsafe(32)
    row = row or UserTotp(user_id=user.id)
    row.ticket_hash, row.ticket_expires_at, row.updated_at = _sha256(ticket), now + ENROLMENT_TICKET_TTL, now
    s.add(row)
    refusal = AppError(403, "totp_enrolment_required",
                       f"角色 {'、'.join(sorted(required))} 须启用动态验证码后才能登录：请用 enrolment_ticket 调用 "
                       "POST /v1/auth/totp/enrol 绑定验证器，再用 /v1/auth/totp/confirm 提交第一个验证码",
                       {"enrolment_ticket": ticket, "expires_in": int(ENROLMENT_TICKET_TTL.total_seconds()),
                        "enrol": "/v1/auth/totp/enrol", "confirm": "/v1/auth/totp/confirm"})
    refusal.trailers = {"enrolment-ticket": ticket}  # type: ignore[attr-defined]  # gRPC has no body
    return refusal


async def _enrolling_user(s: AsyncSession, who: Principal | None, ticket: str | None, now: datetime) -> User:
    """The user enrolling: the bearer of a person's token, or of an enrolment ticket."""
    if ticket:
        row = (await s.exec(select(UserTotp).where(UserTotp.ticket_hash == _sha256(ticket))
                            .with_for_update())).first()
        if row is None or row.ticket_expires_at is None or as_utc(row.ticket_expires_at) <= now:
            raise AppError(401, "invalid_enrolment_ticket", "绑定凭证无效或已过期：请重新用密码登录以获取新的凭证")
        user = await s.get(User, row.user_id)
    elif who is not None:
        if CLIENT_ROLE in who.roles:
            raise forbidden("client_not_allowed", "客户端凭据只能用于接收推送和回执")
        user = await s.get(User, who.subject)
    else:
        raise AppError(401, "unauthenticated", "需要登录令牌，或登录时得到的 enrolment_ticket")
    if user is None or not user.active:
        raise AppError(401, "unauthenticated", "用户不存在或已停用")
    return user


async def enrol_totp(rt: Runtime, who: Principal | None, ticket: str | None = None) -> TotpEnrolment:
    """A new secret for the caller, shown once; pending until `confirm_totp`. A user who has a
    confirmed second factor must disable it first (with a code) or ask ops to reset it."""
    from .models import trail

    now = utcnow()
    secret = otp.new_secret()
    async with rt.db.transaction() as s:
        user = await _enrolling_user(s, who, ticket, now)
        row = await s.get(UserTotp, user.id, with_for_update=True)
        if row is not None and row.confirmed_at is not None:
            raise conflict("totp_already_enrolled", "已启用动态验证码：更换验证器须先停用（提交当前验证码），或请运维人员重置")
        row = row or UserTotp(user_id=user.id)
        row.secret_sealed, row.pending_failures, row.last_step, row.updated_at = _seal_secret(user.id, secret), 0, None, now
        s.add(row)
        await trail.append(s, user.id, "totp_enrolment_started", user.id, None, {"totp": "pending"})
    log.info("TOTP enrolment started by user %s", user.id)
    return TotpEnrolment(secret=secret, otpauth_uri=otp.provisioning_uri(secret, user.username, TOTP_ISSUER))


async def confirm_totp(rt: Runtime, who: Principal | None, code: str, ticket: str | None = None) -> TotpStatus:
    """The first code from the authenticator: the second factor is on from now on. Five wrong
    codes discard the pending secret."""
    from .models import trail

    now = utcnow()
    refused: AppError | None = None
    async with rt.db.transaction() as s:
        user = await _enrolling_user(s, who, ticket, now)
        row = await s.get(UserTotp, user.id, with_for_update=True)
        if row is None or row.confirmed_at is not None or not row.secret_sealed:
            raise conflict("totp_not_pending", "没有待确认的动态验证码绑定：请先调用 POST /v1/auth/totp/enrol")
        step = otp.matching_step(_open_secret(row), code)
        if step is None:
            row.pending_failures += 1
            if row.pending_failures >= PENDING_TRIES:
                row.secret_sealed = None
            s.add(row)
            refused = invalid("invalid_totp", "动态验证码错误" + ("，绑定已作废，请重新开始" if row.secret_sealed is None else ""),
                              {"field": "code"})
        else:
            row.confirmed_at, row.last_step, row.updated_at = now, step, now
            row.ticket_hash = row.ticket_expires_at = None
            s.add(row)
            await trail.append(s, user.id, "totp_enrolled", user.id, {"totp": "pending"}, {"totp": "enrolled"})
            status = TotpStatus(user_id=user.id, enrolled=True, confirmed_at=now)
    if refused is not None:
        raise refused
    log.info("TOTP enrolled by user %s", user.id)
    return status


async def disable_totp(rt: Runtime, who: Principal, code: str) -> TotpStatus:
    """The user turns their second factor off with a current code; not for a role that
    requires it (ops reset it instead, and the user enrols again)."""
    from .models import trail

    if CLIENT_ROLE in who.roles:
        raise forbidden("client_not_allowed", "客户端凭据只能用于接收推送和回执")
    required = totp_required_roles(rt) & set(who.roles)
    if required:
        raise conflict("totp_required_for_role", f"角色 {'、'.join(sorted(required))} 必须启用动态验证码，不能停用")
    now = utcnow()
    async with rt.db.transaction() as s:
        row = await s.get(UserTotp, who.subject, with_for_update=True)
        if row is None or row.confirmed_at is None:
            raise conflict("totp_not_enrolled", "未启用动态验证码")
        step = otp.matching_step(_open_secret(row), code)
        if step is None or (row.last_step is not None and step <= row.last_step):
            raise invalid("invalid_totp", "动态验证码错误，或已使用过", {"field": "code"})
        await s.delete(row)
        await trail.append(s, who.subject, "totp_disabled", who.subject, {"totp": "enrolled"}, None)
    log.info("TOTP disabled by user %s", who.subject)
    return TotpStatus(user_id=who.subject, enrolled=False)


async def reset_totp(rt: Runtime, who: Principal, user_id: str) -> TotpStatus:
    """Ops remove a user's second factor (a lost phone), for a user they reach, never their
    own; audited. A user whose role requires it gets an enrolment ticket at their next sign-in."""
    from .models import trail

    who.require("ops")
    if CLIENT_ROLE in who.roles:
        raise forbidden("client_not_allowed", "客户端凭据只能用于接收推送和回执")
    async with rt.db.transaction() as s:
        user = await s.get(User, user_id)
        if user is None:
            raise not_found("user", user_id)
        who.require_unit(user.unit_id, await unit_path(s, user.unit_id), cross_unit_roles=("ops",))
        if user.id == who.subject:
            raise forbidden("own_user", "不能重置本人的动态验证码，请由其他运维人员办理")
        row = await s.get(UserTotp, user.id, with_for_update=True)
        if row is not None:
            await s.delete(row)
            await trail.append(s, user.id, "totp_reset", who.subject,
                               {"totp": "enrolled" if row.confirmed_at else "pending"}, None)
            # (the lost phone may be in other hands: its sessions end too)
            await s.execute(update(RefreshToken).where(RefreshToken.user_id == user.id,
                                                       RefreshToken.revoked_at.is_(None))
                            .values(revoked_at=utcnow(), revoked_reason="totp_reset"))
    log.info("TOTP of user %s reset by %s", user_id, who.subject)
    return TotpStatus(user_id=user_id, enrolled=False)


async def _failed(rt: Runtime, who: str, locks: bool, address: str) -> None:
    """The attempt's failure is already counted against the username; count it against the
    address, and answer: 401, or 429 when the address is slowed."""
    now = utcnow()
    wait = 0
    if address:
        async with rt.db.transaction() as s:
            row = await _locked_row(s, f"addr:{address}")
            _count_failure(row, ADDRESS_POLICY, now)
            s.add(row)
            failures = row.failures
        if failures >= ADDRESS_POLICY.slow_after:
            wait = ADDRESS_POLICY.delay_s(failures)
            if failures == ADDRESS_POLICY.slow_after:
                log.warning("sign-in: client address %s slowed after %d failed sign-ins in a row (not locked)",
                            address, failures)
    if locks:
        log.warning("sign-in locked for %d s after repeated failures: user=%s", USER_POLICY.lock_s, who)
    if wait:
        raise ThrottledError("signin_throttled", f"登录尝试过于频繁，请 {wait} 秒后再试", wait)
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
    """Refuse a username before the password is even checked: the same answer for every
    username. (Never applied to an address: see ADDRESS_POLICY.)"""
    if row is None:
        return
    if _locked(row, now):
        wait = math.ceil((as_utc(row.locked_until) - now).total_seconds())
        raise ThrottledError("account_locked", f"登录失败次数过多，已暂时锁定，请 {wait} 秒后再试", wait)
    failures = _streak(row, policy, now)
    if policy.slow_after <= failures and (policy.lock_after is None or failures < policy.lock_after):
        ready_at = as_utc(row.last_failed_at) + timedelta(seconds=policy.delay_s(failures))
        if now < ready_at:
            wait = math.ceil((ready_at - now).total_seconds())
            raise ThrottledError("signin_throttled", f"登录尝试过于频繁，请 {wait} 秒后再试", wait)


def _count_failure(row: SigninFailure, policy: ThrottlePolicy, now: datetime) -> bool:
    """Add one failure to the streak; True when this failure starts a lock."""
    row.failures = _streak(row, policy, now) + 1
    row.last_failed_at = now
    if policy.lock_after is not None and row.failures >= policy.lock_after:
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
            elif await _lacks_required_totp(rt, s, user):
                # a role that now requires a second factor (given since, or the factor reset):
                # the session ends, and the password sign-in leads to enrolment
                await _revoke_family(s, row.family_id, "totp_required", now)
            else:
                row.revoked_at, row.revoked_reason = now, "rotated"
                s.add(row)
                result = await _user_claims(s, user), await _new_refresh_token(s, user.id, row.family_id, now)
    if result is None:
        raise invalid_grant("刷新令牌无效或已过期")
    return result


async def _client_grant(rt: Runtime, client_id: str, client_secret: str) -> dict:
    """A stream or nats account's client: the token reaches its own account and unit only
    (and, for nats, gets its NATS credentials: nats_clients.py)."""
    if len(client_id) > MAX_OPAQUE or len(client_secret) > MAX_OPAQUE:
        raise AppError(401, "invalid_client", "客户端凭据无效")
    async with rt.db.session() as s:
        account = await s.get(Account, client_id) if client_id else None
    stored = account.client_secret_hash if account else None
    if is_legacy_client_secret(stored):  # an Argon2 hash of old: 64 MiB, so in the pool
        pool = hash_pool(rt)
        async with pool.slot():
            ok = await pool.run(verify_client_secret, stored, client_secret, passwords(rt))
    else:  # SHA-256 of 256 random bits: cheap
        ok = verify_client_secret(stored, client_secret, passwords(rt))
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


# --- client credentials of stream and nats accounts ------------------------------

CREDENTIAL_ADMINS = ("ops", "regulator")


async def _stream_account(s: AsyncSession, who: Principal, account_id: str) -> Account:
    """A stream or nats account of the caller's region subtree (the code keeps its old name)."""
    account = (await s.exec(select(Account).where(Account.id == account_id).with_for_update())).first()
    if account is None:
        raise not_found("account", account_id)
    who.require_unit(account.unit_id, await path_of(s, account.region_id), cross_unit_roles=CREDENTIAL_ADMINS)
    if account.delivery_mode not in CLIENT_MODES:
        raise conflict("not_stream_account", "只有以流式或 NATS 方式接收的账号才有客户端凭据", {"id": account_id})
    return account


async def rotate_client_secret(rt: Runtime, who: Principal, account_id: str) -> ClientSecretIssued:
    """A new secret replaces the old one at once (the old one stops working); shown once. The
    account's NATS users are revoked too: the servers disconnect them within seconds."""
    who.require(*CREDENTIAL_ADMINS)
    secret = secrets.token_urlsafe(32)
    secret_hash = hash_client_secret(secret)
    now = utcnow()
    async with rt.unit_of_work() as s:
        account = await _stream_account(s, who, account_id)
        account.client_secret_hash, account.updated_at = secret_hash, now
        s.add(account)
        # Tokens got with the old secret stop verifying everywhere within JWKS_REFRESH_S, and
        # the client's open streams end with them (dispatch re-verifies each stream's token).
        await revoke_subject(s, account_id, "secret_rotated")
        revoked = await nats_clients.revoke_keys(s, account_id, "secret_rotated")
    if revoked:
        nats_clients.push_soon(rt)
    log.info("client secret of account %s rotated by %s", account_id, who.subject)
    return ClientSecretIssued(client_id=account_id, client_secret=secret, rotated_at=now)


async def revoke_client_secret(rt: Runtime, who: Principal, account_id: str) -> None:
    """The client can no longer get tokens; those already issued stop verifying within JWKS_REFRESH_S,
    and its NATS users are disconnected within seconds."""
    who.require(*CREDENTIAL_ADMINS)
    async with rt.unit_of_work() as s:
        account = await _stream_account(s, who, account_id)
        account.client_secret_hash, account.updated_at = None, utcnow()
        s.add(account)
        await revoke_subject(s, account_id, "secret_revoked")  # its tokens and streams end too
        revoked = await nats_clients.revoke_keys(s, account_id, "secret_revoked")
    if revoked:
        nats_clients.push_soon(rt)
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

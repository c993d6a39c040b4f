"""Sign-in hardening of the account service, as real processes on both databases: refresh
token rotation and reuse detection, revocation, failed sign-in throttling and lockout
(surviving a restart), signing key rotation seen by another service, client secrets of
stream accounts, the gRPC refresh grant; and two replicas sharing one database, in-process.

Time-based rules (throttle delays) are exercised by moving the stored failure time back,
not by sleeping: the rules read the database, so the running process sees the change."""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import time
from datetime import timedelta

import grpc
import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine
from sqlmodel import select as select_rows

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia_kit.auth import Principal
from govmedia_kit.db import utcnow
from govmedia_kit.errors import AppError
from services.account.models import Account, User
from tests.conftest import drop_pg_databases, fresh_pg_databases
from tests.helpers import DEMO_PASSWORD, assert_error, auth, client, login

STREAM_ACCOUNT = {
    "platform": "app", "name": "示范省政务客户端", "handle": "sfs-app-signin", "opened_on": "2026-01-05",
    "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"}, "delivery": {"mode": "stream"},
}


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account",), env={"ACCOUNT_TRUSTED_PROXIES": "127.0.0.1"})


# --- helpers -----------------------------------------------------------------------

def _db_url(stack) -> str:
    return stack._pg_urls.get("account") or f"sqlite+aiosqlite:///{stack.data_dir / 'account.db'}"


def db_exec(stack, statement):
    """Run one statement against the account service's database (from sync test code)."""
    async def run():
        engine = create_async_engine(_db_url(stack))
        try:
            async with engine.begin() as conn:
                result = await conn.execute(statement)
                return result.all() if result.returns_rows else result.rowcount
        finally:
            await engine.dispose()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def age_failures(stack, subject: str, seconds: float) -> None:
    """Pretend the last failed sign-in of `subject` happened `seconds` ago."""
    from services.account.signin_models import SigninFailure

    table = SigninFailure.__table__
    assert db_exec(stack, update(table).where(table.c.subject == subject)
                   .values(last_failed_at=utcnow() - timedelta(seconds=seconds))) == 1


def sign_in(acc: httpx.Client, username: str, password: str, address: str = "198.51.100.1") -> httpx.Response:
    # The test talks from 127.0.0.1, which the fixture trusts as a proxy (ACCOUNT_TRUSTED_PROXIES):
    # X-Forwarded-For sets the client address.
    return acc.post("/v1/auth/token", data={"username": username, "password": password},
                    headers={"X-Forwarded-For": address})


def refresh(acc: httpx.Client, token: str) -> httpx.Response:
    return acc.post("/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


# --- refresh tokens -------------------------------------------------------------------

def test_refresh_rotation_reuse_detection_and_revoke(stack):
    acc = client(stack, "account")
    first = sign_in(acc, "editor", DEMO_PASSWORD)
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    body = first.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert body["refresh_token"] and body["refresh_expires_in"] == 14 * 86400
    r1 = body["refresh_token"]

    # rotation: a new access token and a new refresh token; the new access token works
    second = refresh(acc, r1)
    assert second.status_code == 200, second.text
    r2 = second.json()["refresh_token"]
    assert r2 != r1 and second.json()["access_token"] != body["access_token"]
    assert acc.get("/v1/users", headers=auth(second.json()["access_token"])).status_code == 200
    r3 = refresh(acc, r2).json()["refresh_token"]

    # reusing a rotated token (someone copied it) ends the whole session, the newest token too
    assert_error(refresh(acc, r1), 401, "invalid_grant")
    assert_error(refresh(acc, r3), 401, "invalid_grant")
    # other sessions of the same user are not touched
    other = sign_in(acc, "editor", DEMO_PASSWORD).json()["refresh_token"]
    assert refresh(acc, other).status_code == 200

    # RFC 7009 revocation ends the session; unknown tokens answer the same
    s1 = sign_in(acc, "ops", DEMO_PASSWORD).json()["refresh_token"]
    revoked = acc.post("/v1/auth/revoke", data={"token": s1, "token_type_hint": "refresh_token"})
    assert revoked.status_code == 200, revoked.text
    assert_error(refresh(acc, s1), 401, "invalid_grant")
    assert acc.post("/v1/auth/revoke", data={"token": "never-issued"}).status_code == 200
    assert_error(acc.post("/v1/auth/revoke", data={}), 400, "invalid_request")
    access = login(stack, "ops")
    assert_error(acc.post("/v1/auth/revoke", data={"token": access}), 400, "unsupported_token_type")

    # bad input
    assert_error(refresh(acc, ""), 400, "invalid_request")
    assert_error(refresh(acc, "x" * 300), 422, "validation_failed")
    assert_error(refresh(acc, "not-a-token"), 401, "invalid_grant")
    assert_error(acc.post("/v1/auth/token", data={"grant_type": "implicit"}), 400, "unsupported_grant_type")
    assert_error(acc.post("/v1/auth/token", data={"username": "editor"}), 400, "invalid_request")

    # a deactivated user's refresh tokens stop working
    live = sign_in(acc, "handler", DEMO_PASSWORD).json()["refresh_token"]
    users = User.__table__
    assert db_exec(stack, update(users).where(users.c.username == "handler").values(active=False)) == 1
    assert_error(refresh(acc, live), 401, "invalid_grant")
    assert_error(sign_in(acc, "handler", DEMO_PASSWORD), 401, "invalid_grant")


async def test_grpc_refresh_grant(stack):
    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        first = await stub.IssueToken(pb.IssueTokenRequest(username="editor", password=DEMO_PASSWORD))
        assert first.access_token and first.refresh_token and first.refresh_expires_in == 14 * 86400
        second = await stub.IssueToken(pb.IssueTokenRequest(grant_type="refresh_token",
                                                            refresh_token=first.refresh_token))
        assert second.access_token and second.refresh_token not in ("", first.refresh_token)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueToken(pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=first.refresh_token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ("error-code", "invalid_grant") in tuple(err.value.trailing_metadata())
        # the reuse ended the session: the rotated token is refused too
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueToken(pb.IssueTokenRequest(grant_type="refresh_token", refresh_token=second.refresh_token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- failed sign-ins ---------------------------------------------------------------------

def test_failed_sign_ins_slow_down_then_lock_and_the_lock_survives_a_restart(stack):
    acc = client(stack, "account")
    # four failures, then a success: the streak starts over
    first_failure = sign_in(acc, "editor", "wrong-password")
    assert_error(first_failure, 401, "invalid_grant")
    for _ in range(3):
        assert_error(sign_in(acc, "editor", "wrong-password"), 401, "invalid_grant")
    assert sign_in(acc, "editor", DEMO_PASSWORD).status_code == 200
    for _ in range(5):  # had the success not reset the streak, these would already be slowed
        assert_error(sign_in(acc, "editor", "wrong-password"), 401, "invalid_grant")

    # after five: slowed down, even with the right password, with a growing delay
    slowed = sign_in(acc, "editor", DEMO_PASSWORD)
    body = assert_error(slowed, 429, "signin_throttled")
    first_wait = int(slowed.headers["retry-after"])
    assert 0 < first_wait <= 5 and body["error"]["details"]["retry_after_s"] == first_wait
    waits = [first_wait]
    for _ in range(4):  # failures six to nine, each after the delay has passed
        age_failures(stack, "user:editor", 3600)
        assert_error(sign_in(acc, "editor", "wrong-password"), 401, "invalid_grant")
        if len(waits) < 4:
            waits.append(int(assert_error(sign_in(acc, "editor", "wrong-password"), 429,
                                          "signin_throttled")["error"]["details"]["retry_after_s"]))
    assert waits == sorted(waits) and waits[-1] > waits[0]

    # after ten: locked for 15 minutes, the right password does not help
    age_failures(stack, "user:editor", 3600)
    assert_error(sign_in(acc, "editor", "wrong-password"), 401, "invalid_grant")
    locked = sign_in(acc, "editor", DEMO_PASSWORD)
    assert_error(locked, 429, "account_locked")
    assert 890 <= int(locked.headers["retry-after"]) <= 900

    # a username that does not exist gets exactly the same answers, so none tells which exist
    ghost = [sign_in(acc, "nobody", "wrong-password", address="198.51.100.2") for _ in range(6)]
    assert [r.status_code for r in ghost] == [401] * 5 + [429]
    assert ghost[0].json() == first_failure.json()
    assert ghost[5].json()["error"]["code"] == "signin_throttled" and ghost[5].headers["retry-after"]

    # the lock is in the database: a restart keeps it; other users are not affected
    stack.restart("account")
    acc = client(stack, "account")
    assert_error(sign_in(acc, "editor", DEMO_PASSWORD), 429, "account_locked")
    assert sign_in(acc, "ops", DEMO_PASSWORD, address="198.51.100.3").status_code == 200

    # per client address: from the twentieth failure from one address over many usernames, its
    # failures answer 429 with Retry-After; a correct password from it still signs in (never
    # locked by address alone: tests/test_security_signin.py)
    for i in range(19):
        assert_error(sign_in(acc, f"spray{i}", "Password1!", address="203.0.113.7"), 401, "invalid_grant")
    assert_error(sign_in(acc, "spray19", "Password1!", address="203.0.113.7"), 429, "signin_throttled")
    assert sign_in(acc, "ops", DEMO_PASSWORD, address="203.0.113.7").status_code == 200
    assert sign_in(acc, "ops", DEMO_PASSWORD, address="203.0.113.8").status_code == 200

    # bad input is refused before anything is counted
    assert_error(sign_in(acc, "x" * 65, "whatever"), 422, "validation_failed")


# --- signing keys -------------------------------------------------------------------------

def test_key_rotation_keeps_issued_tokens_valid_and_retires_old_keys(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "content"))
    acc, content = client(stack, "account"), client(stack, "content")
    ops = client(stack, "account", login(stack, "ops"))
    old_editor = login(stack, "editor")
    k1 = kid_of(old_editor)
    assert content.get("/v1/drafts", headers=auth(old_editor)).status_code == 200

    # only ops may rotate; bad input changes nothing
    assert_error(client(stack, "account", old_editor).post("/v1/auth/keys/rotate"), 403, "role_required")
    assert_error(ops.post("/v1/auth/keys/rotate", json={"grace_s": -1}), 422, "validation_failed")
    assert_error(ops.post("/v1/auth/keys/rotate", json={"grace": 10}), 422, "validation_failed")
    assert_error(acc.post("/v1/auth/keys/rotate"), 401, "unauthenticated")
    assert [k["kid"] for k in acc.get("/.well-known/jwks.json").json()["keys"]] == [k1]

    rotated = ops.post("/v1/auth/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    k2 = rotated.json()["kid"]
    assert k2 != k1
    states = {k["kid"]: k for k in rotated.json()["keys"]}
    assert states[k1]["published"] and not states[k1]["active"] and states[k1]["retire_at"]
    assert {k["kid"] for k in acc.get("/.well-known/jwks.json").json()["keys"]} == {k1, k2}

    # new tokens use the new key at once; old and new both verify here and at another service
    new_editor = login(stack, "editor")
    assert kid_of(new_editor) == k2
    # content fetched the JWKS moments ago; the kit refetches on an unknown kid at most every 2 s
    time.sleep(2.1)
    for token in (old_editor, new_editor):
        assert content.get("/v1/drafts", headers=auth(token)).status_code == 200
        assert acc.get("/v1/users", headers=auth(token)).status_code == 200

    # an emergency rotation with a short grace: k2 leaves the JWKS when it ends, k1 keeps its grace
    k3 = ops.post("/v1/auth/keys/rotate", json={"grace_s": 1}).json()["kid"]
    assert {k["kid"] for k in acc.get("/.well-known/jwks.json").json()["keys"]} == {k1, k2, k3}
    time.sleep(1.2)
    assert {k["kid"] for k in acc.get("/.well-known/jwks.json").json()["keys"]} == {k1, k3}
    assert_error(acc.get("/v1/users", headers=auth(new_editor)), 401, "unauthenticated")
    assert acc.get("/v1/users", headers=auth(old_editor)).status_code == 200
    listed = {k["kid"]: k for k in client(stack, "account", login(stack, "ops")).get("/v1/auth/keys").json()}
    assert listed[k3]["active"] and not listed[k2]["published"] and listed[k1]["published"]

    # the keys are in the database: after a restart the same keys are published and verify
    stack.restart("account")
    assert {k["kid"] for k in acc.get("/.well-known/jwks.json").json()["keys"]} == {k1, k3}
    assert acc.get("/v1/users", headers=auth(old_editor)).status_code == 200
    assert kid_of(login(stack, "editor")) == k3


# --- client credentials --------------------------------------------------------------------

def test_client_secret_rotation_and_revocation(stack):
    acc = client(stack, "account")
    ops = client(stack, "account", login(stack, "ops"))
    regulator = client(stack, "account", login(stack, "regulator"))
    editor = client(stack, "account", login(stack, "editor"))
    unit_id = ops.get("/v1/units").json()["items"][0]["id"]
    created = ops.post("/v1/accounts", json={**STREAM_ACCOUNT, "unit_id": unit_id})
    assert created.status_code == 201, created.text
    account_id, s1 = created.json()["id"], created.json()["client_secret"]
    webhook = ops.post("/v1/accounts", json={
        **STREAM_ACCOUNT, "unit_id": unit_id, "platform": "weibo", "handle": "sfs-weibo-signin",
        "delivery": {"mode": "webhook", "url": "https://example.org/hook", "secret": "s" * 32}}).json()

    def client_token(secret: str) -> httpx.Response:
        return acc.post("/v1/auth/token", data={"grant_type": "client_credentials", "client_id": account_id,
                                                 "client_secret": secret})

    first = client_token(s1)
    assert first.status_code == 200 and "refresh_token" not in first.json()
    claims = jwt.decode(first.json()["access_token"], options={"verify_signature": False})
    assert claims["unit"] == unit_id and claims["account"] == account_id and claims["roles"] == ["client"]
    # limited to its own account
    as_client = client(stack, "account", first.json()["access_token"])
    assert as_client.get(f"/v1/accounts/{account_id}").status_code == 200
    assert_error(as_client.get(f"/v1/accounts/{webhook['id']}"), 403, "other_account")

    # wrong roles, unknown and unsuitable accounts
    assert_error(editor.post(f"/v1/accounts/{account_id}/client-secret"), 403, "role_required")
    assert_error(editor.delete(f"/v1/accounts/{account_id}/client-secret"), 403, "role_required")
    assert_error(as_client.post(f"/v1/accounts/{account_id}/client-secret"), 403, "client_not_allowed")
    assert_error(ops.post("/v1/accounts/nope/client-secret"), 404, "account_not_found")
    assert_error(ops.post(f"/v1/accounts/{webhook['id']}/client-secret"), 409, "not_stream_account")
    assert client_token(s1).status_code == 200  # nothing changed

    # rotation: the new secret is shown once and replaces the old one at once
    rotated = regulator.post(f"/v1/accounts/{account_id}/client-secret")
    assert rotated.status_code == 200, rotated.text
    assert rotated.headers["cache-control"] == "no-store"
    s2 = rotated.json()["client_secret"]
    assert rotated.json()["client_id"] == account_id and s2 != s1
    assert_error(client_token(s1), 401, "invalid_client")
    assert client_token(s2).status_code == 200
    assert s2 not in ops.get(f"/v1/accounts/{account_id}").text

    # revocation: no more tokens for this client
    assert ops.delete(f"/v1/accounts/{account_id}/client-secret").status_code == 204
    assert_error(client_token(s2), 401, "invalid_client")
    assert_error(client_token(""), 401, "invalid_client")
    assert ops.delete(f"/v1/accounts/{account_id}/client-secret").status_code == 204  # idempotent
    # and a rotation after a revocation issues working credentials again
    s3 = ops.post(f"/v1/accounts/{account_id}/client-secret").json()["client_secret"]
    assert client_token(s3).status_code == 200

    # kept as SHA-256 (256 random bits need no memory-hard hash); a secret issued when they
    # were kept as Argon2 hashes still works, and is kept as SHA-256 from its first use
    accounts = Account.__table__

    def stored() -> str:
        return db_exec(stack, select(accounts.c.client_secret_hash).where(accounts.c.id == account_id))[0][0]

    assert stored() == "sha256$" + hashlib.sha256(s3.encode()).hexdigest()
    legacy = "legacy-" + s3
    db_exec(stack, update(accounts).where(accounts.c.id == account_id)
            .values(client_secret_hash=PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1).hash(legacy)))
    assert_error(client_token(s3), 401, "invalid_client")
    assert client_token(legacy).status_code == 200
    assert stored() == "sha256$" + hashlib.sha256(legacy.encode()).hexdigest()
    assert client_token(legacy).status_code == 200
    assert_error(client_token(s3), 401, "invalid_client")


def test_a_new_password_hash_cost_renews_each_hash_at_its_next_sign_in(stack):
    users = User.__table__

    def stored() -> str:
        return db_exec(stack, select(users.c.password_hash).where(users.c.username == "editor"))[0][0]

    assert "$m=19456,t=2,p=1$" in stored()  # the suite's cost (conftest)
    stack.services["account"].env.update({"ACCOUNT_PASSWORD_HASH_MEMORY_KIB": "65536",
                                          "ACCOUNT_PASSWORD_HASH_TIME_COST": "3",
                                          "ACCOUNT_PASSWORD_HASH_PARALLELISM": "4"})
    stack.restart("account")
    acc = client(stack, "account")
    assert_error(sign_in(acc, "editor", "wrong-password"), 401, "invalid_grant")
    assert "$m=19456,t=2,p=1$" in stored()  # a failed sign-in changes nothing
    assert sign_in(acc, "editor", DEMO_PASSWORD).status_code == 200
    assert "$m=65536,t=3,p=4$" in stored()
    assert sign_in(acc, "editor", DEMO_PASSWORD).status_code == 200


def test_password_hash_cost_cannot_go_below_owasps_floor():
    from services.account.service import load_settings

    assert load_settings(password_hash_memory_kib=19456, password_hash_time_cost=2).password_hash_time_cost == 2
    for memory, passes in ((8192, 1), (19456, 1), (4096, 10)):
        with pytest.raises(ValueError, match="35840|7168"):
            load_settings(password_hash_memory_kib=memory, password_hash_time_cost=passes)


# --- two replicas on one database (in-process, no broker needed) ----------------------------

async def test_replicas_pick_up_a_rotation_and_housekeeping_prunes(db_backend, tmp_path):
    from services.account import signin
    from services.account.models import Region, Unit, User
    from services.account.service import build_spec, load_settings
    from services.account.signin_models import RefreshToken, SigninFailure
    from govmedia_kit.runtime import Runtime

    urls = await asyncio.to_thread(fresh_pg_databases, ["account"]) if db_backend == "postgres" else {}
    url = urls.get("account", f"sqlite+aiosqlite:///{tmp_path / 'account.db'}")
    spec = build_spec()
    a = Runtime(spec, load_settings(database_url=url, data_dir=tmp_path))
    b = Runtime(spec, load_settings(database_url=url, data_dir=tmp_path))
    try:
        await a.db.migrate(spec.migrations_dir)
        await signin.start_keyring(a)
        await signin.start_keyring(b)
        k1 = a.state["keyring"].active_kid
        assert b.state["keyring"].active_kid == k1
        ops = Principal(subject="ops-user", name="ops", unit_id="u", roles=("ops",), region_path="/province/")
        with pytest.raises(AppError) as err:
            await signin.rotate_keys(a, Principal(subject="e", name="e", unit_id="u", roles=("editor",)))
        assert err.value.code == "role_required"

        k2 = (await signin.rotate_keys(a, ops)).kid
        token, _ = a.state["keyring"].sign({"sub": "someone", "roles": ["editor"]}, a.settings.token_issuer)
        # replica b has not seen k2 yet: the unknown kid makes it reload the ring from the database
        assert (await b.verifier.verify(token)).subject == "someone"
        assert b.state["keyring"].active_kid == k2
        assert {k["kid"] for k in b.state["keyring"].jwks()["keys"]} == {k1, k2}

        # housekeeping forgets stale streaks and long-expired refresh tokens, keeps the rest
        now = utcnow()
        async with a.db.transaction() as s:
            region = Region.new("示范省", "province")
            s.add(region)
            await s.flush()
            unit = Unit(name="省政府办公厅", region_id=region.id, kind="government")
            s.add(unit)
            await s.flush()
            user = User(username="u1", password_hash="x", unit_id=unit.id, roles=["editor"])
            s.add(user)
            await s.flush()
            s.add(SigninFailure(subject="user:stale", failures=3, last_failed_at=now - timedelta(days=2)))
            s.add(SigninFailure(subject="user:fresh", failures=3, last_failed_at=now - timedelta(minutes=1)))
            s.add(SigninFailure(subject="user:locked", failures=12, last_failed_at=now - timedelta(days=2),
                                locked_until=now + timedelta(minutes=5)))
            s.add(RefreshToken(token_hash="a" * 64, family_id="f1", user_id=user.id,
                               expires_at=now - timedelta(days=2)))
            s.add(RefreshToken(token_hash="b" * 64, family_id="f2", user_id=user.id,
                               expires_at=now + timedelta(days=2)))
        await signin.prune(b)
        async with a.db.session() as s:
            subjects = {row.subject for row in (await s.exec(select_rows(SigninFailure))).all()}
            hashes = {row.token_hash for row in (await s.exec(select_rows(RefreshToken))).all()}
        assert subjects == {"user:fresh", "user:locked"}
        assert hashes == {"b" * 64}
    finally:
        await a.db.dispose()
        await b.db.dispose()
        if urls:
            await asyncio.to_thread(drop_pg_databases, urls)

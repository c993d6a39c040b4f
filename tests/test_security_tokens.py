"""Issue 16, tokens and sign-in: retired keys and revoked users refused by every service,
the audience, signing keys sealed at rest, and user administration (deactivate, reactivate,
roles, password reset) with its audit trail, over REST and gRPC, on both databases.

"Within 60 s" is tested with `JWKS_REFRESH_S` made short and `eventually` (no timing in the
assertions): each check polls until the answer is 401, with a generous timeout."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import create_async_engine

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia.content.v1 import content_pb2, content_pb2_grpc
from govmedia.dispatch.v1 import dispatch_pb2, dispatch_pb2_grpc
from govmedia.petition.v1 import petition_pb2, petition_pb2_grpc
from govmedia.review.v1 import review_pb2, review_pb2_grpc
from govmedia_kit.auth import PLATFORM_AUDIENCE, TokenVerifier
from govmedia_kit.errors import AppError
from services.account.models import SigningKey
from services.account.tokens import KeyEncryptionError, KeySealer, install_key_sealer, parse_kek
from tests.helpers import DEMO_PASSWORD, assert_error, client, eventually, login

ISSUER = "govmedia-account"
KEK_A, KEK_B = "11" * 32, "22" * 32
FAST = {"JWKS_REFRESH_S": "1"}


# --- the kit's verifier against a real JWKS server (pure, no services) ----------------------

def keypair(kid: str):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return key, jwk


def sign(key, kid: str, **claims) -> str:
    now = int(time.time())
    base = {"sub": "u1", "name": "editor", "unit": "unit-1", "roles": ["editor"], "iss": ISSUER,
            "aud": PLATFORM_AUDIENCE, "iat": now, "exp": now + 600}
    body = {**base, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256",
                      headers={"kid": kid})


class KeyServer:
    """A real HTTP server publishing a JWKS and a revocation list that the test changes."""

    def __init__(self):
        self.jwks: dict = {"keys": []}
        self.revocations: list = []
        self.up = True
        self.jwks_fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if not outer.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.jwks_fetches += self.path.endswith("jwks.json")
                body = json.dumps(outer.jwks if self.path.endswith("jwks.json")
                                  else {"revocations": outer.revocations}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def key_server():
    server = KeyServer()
    yield server
    server.close()


async def refused(verifier: TokenVerifier, token: str) -> AppError | None:
    try:
        await verifier.verify(token)
        return None
    except AppError as exc:
        return exc


async def until_refused(verifier: TokenVerifier, token: str, timeout: float = 30) -> AppError:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        err = await refused(verifier, token)
        if err is not None:
            return err
        await asyncio.sleep(0.05)
    raise AssertionError("token still accepted")


async def test_each_fetch_replaces_the_key_set(key_server):
    """A key the account service stopped publishing stops verifying, though its kid is known
    (before: keys were only ever added, and a known kid never fetched again)."""
    k1, jwk1 = keypair("k1")
    k2, jwk2 = keypair("k2")
    key_server.jwks = {"keys": [jwk1]}
    verifier = TokenVerifier(key_server.url, ISSUER, refresh_s=0.2)
    old = sign(k1, "k1")
    assert (await verifier.verify(old)).subject == "u1"
    key_server.jwks = {"keys": [jwk2]}  # k1 retired with no grace
    err = await until_refused(verifier, old)
    assert err.status == 401 and err.code == "unauthenticated"
    assert (await verifier.verify(sign(k2, "k2"))).subject == "u1"  # an unknown kid is fetched at once


async def test_unknown_key_ids_fetch_at_most_every_two_seconds(key_server):
    """A burst of tokens naming key ids nobody published costs one fetch, not one each."""
    k1, jwk1 = keypair("k1")
    key_server.jwks = {"keys": [jwk1]}
    verifier = TokenVerifier(key_server.url, ISSUER, refresh_s=60)
    assert (await verifier.verify(sign(k1, "k1"))).subject == "u1"
    forged = [sign(k1, f"forged-{n}") for n in range(50)]
    fetched, started = key_server.jwks_fetches, time.monotonic()
    for token in forged:
        err = await refused(verifier, token)
        assert err is not None and err.status == 401
    # one fetch per two seconds of the burst at most (however slow the machine is)
    assert key_server.jwks_fetches - fetched <= 1 + int((time.monotonic() - started) / 2)


async def test_tokens_must_carry_the_platform_audience(key_server):
    k1, jwk1 = keypair("k1")
    key_server.jwks = {"keys": [jwk1]}
    verifier = TokenVerifier(key_server.url, ISSUER)
    assert (await verifier.verify(sign(k1, "k1"))).subject == "u1"
    assert (await verifier.verify(sign(k1, "k1", aud=[PLATFORM_AUDIENCE, "other"]))).subject == "u1"
    for bad in (sign(k1, "k1", aud=None), sign(k1, "k1", aud="some-other-api"), sign(k1, "k1", iat=None)):
        err = await refused(verifier, bad)
        assert err is not None and err.status == 401 and err.code == "unauthenticated"


async def test_revocation_list_refuses_tokens_issued_before_not_before(key_server):
    k1, jwk1 = keypair("k1")
    key_server.jwks = {"keys": [jwk1]}
    verifier = TokenVerifier(key_server.url, ISSUER, refresh_s=0.2)
    now = int(time.time())
    old, other = sign(k1, "k1", iat=now - 10), sign(k1, "k1", sub="u2", iat=now - 10)
    assert (await verifier.verify(old)).subject == "u1"
    key_server.revocations = [{"sub": "u1", "not_before": now - 5}]
    err = await until_refused(verifier, old)
    assert err.status == 401 and err.code == "unauthenticated"
    assert (await verifier.verify(sign(k1, "k1", iat=now - 1))).subject == "u1"  # issued after: fine
    assert (await verifier.verify(other)).subject == "u2"  # other subjects untouched
    key_server.revocations = []  # the list is replaced too
    assert (await until_accepted(verifier, old)).subject == "u1"


async def until_accepted(verifier: TokenVerifier, token: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return await verifier.verify(token)
        except AppError:
            await asyncio.sleep(0.05)
    raise AssertionError("token still refused")


async def test_a_verifier_that_cannot_fetch_refuses_after_max_stale(key_server):
    """The last good copy serves through a short outage; past MAX_STALE_S it is no longer trusted."""
    k1, jwk1 = keypair("k1")
    key_server.jwks = {"keys": [jwk1]}
    verifier = TokenVerifier(key_server.url, ISSUER, refresh_s=0.1, max_stale_s=0.5)
    token = sign(k1, "k1")
    assert (await verifier.verify(token)).subject == "u1"
    key_server.up = False
    err = await until_refused(verifier, token)
    assert err.status == 503 and err.code == "token_verification_unavailable"
    key_server.up = True
    assert (await until_accepted(verifier, token)).subject == "u1"


# --- the key encryption key (pure) --------------------------------------------------------------

def test_sealed_keys_are_bound_to_their_row_and_their_key_encryption_key(tmp_path):
    a, b = KeySealer(parse_kek(KEK_A)), KeySealer(parse_kek(KEK_B))
    sealed = a.seal("k-1", "-----BEGIN PRIVATE KEY-----x")
    assert "PRIVATE KEY" not in sealed and a.open("k-1", sealed) == "-----BEGIN PRIVATE KEY-----x"
    with pytest.raises(KeyEncryptionError, match="moved"):
        a.open("k-2", sealed)  # the same value in another row does not open
    with pytest.raises(KeyEncryptionError, match="ACCOUNT_KEY_ENCRYPTION_KEY"):
        b.open("k-1", sealed)
    rotated = KeySealer(parse_kek(KEK_B), (parse_kek(KEK_A),))
    assert rotated.open("k-1", sealed).endswith("x") and rotated.needs_sealing(sealed)
    assert not rotated.needs_sealing(rotated.seal("k-1", "pem"))
    with pytest.raises(KeyEncryptionError, match="required in production"):
        install_key_sealer("", "", tmp_path, production=True)
    with pytest.raises(KeyEncryptionError, match="32 bytes"):
        install_key_sealer("too-short", "", tmp_path, production=True)
    assert "11" not in repr(install_key_sealer(KEK_A, "", tmp_path, production=True))


# --- helpers for the service stacks -----------------------------------------------------------

def _db_url(stack) -> str:
    return stack._pg_urls.get("account") or f"sqlite+aiosqlite:///{stack.data_dir / 'account.db'}"


def db_exec(stack, statement):
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


REST_PROBES = {"account": "/v1/users", "content": "/v1/drafts", "review": "/v1/reviews",
               "dispatch": "/v1/deliveries", "petition": "/v1/petitions"}


def md(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


async def _probe(name: str, channel, token: str):
    if name == "account":
        return await pb_grpc.AccountServiceStub(channel).ListUsers(pb.ListRequest(), metadata=md(token), timeout=10)
    if name == "content":
        return await content_pb2_grpc.ContentServiceStub(channel).ListDrafts(
            content_pb2.ListDraftsRequest(), metadata=md(token), timeout=10)
    if name == "review":
        return await review_pb2_grpc.ReviewServiceStub(channel).ListReviews(
            review_pb2.ListReviewsRequest(), metadata=md(token), timeout=10)
    if name == "dispatch":
        return await dispatch_pb2_grpc.DispatchServiceStub(channel).ListDeliveries(
            dispatch_pb2.ListDeliveriesRequest(), metadata=md(token), timeout=10)
    return await petition_pb2_grpc.PetitionServiceStub(channel).ListPetitions(
        petition_pb2.ListPetitionsRequest(), metadata=md(token), timeout=10)


def answers(stack, token: str, services=tuple(REST_PROBES)) -> dict:
    """Per service, REST status and gRPC status for the token."""
    rest = {}
    for name in services:
        with client(stack, name, token) as http:
            rest[name] = http.get(REST_PROBES[name]).status_code
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        codes = pool.submit(asyncio.run, _probe_all(stack, token, services)).result()
    return {name: (rest[name], codes[name]) for name in services}


async def _probe_all(stack, token, services) -> dict:
    codes = {}
    for name in services:
        async with grpc.aio.insecure_channel(stack.services[name].grpc_target) as channel:
            try:
                await _probe(name, channel, token)
                codes[name] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                codes[name] = err.code()
    return codes


def refused_everywhere(stack, token: str, services=tuple(REST_PROBES)):
    got = answers(stack, token, services)
    assert all(r == 401 and g == grpc.StatusCode.UNAUTHENTICATED for r, g in got.values()), got
    return True


def accepted_everywhere(stack, token: str, services=tuple(REST_PROBES)):
    got = answers(stack, token, services)
    assert all(r != 401 and g != grpc.StatusCode.UNAUTHENTICATED for r, g in got.values()), got
    return True


def user_id(stack, ops_token: str, username: str) -> str:
    with client(stack, "account", ops_token) as ops:
        users = ops.get("/v1/users", params={"limit": 200}).json()["items"]
    return next(u["id"] for u in users if u["username"] == username)


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


# --- all five services -----------------------------------------------------------------------

def test_retired_keys_and_revoked_users_are_refused_by_all_five_services(stack_factory, db_backend):
    stack = stack_factory(db_backend, env=FAST)
    ops_token = login(stack, "ops")
    ops = client(stack, "account", ops_token)
    editor, reviewer1, handler, regulator, supervisor = (login(stack, name) for name in (
        "editor", "reviewer1", "handler", "regulator", "supervisor"))
    for token in (editor, reviewer1, handler, regulator, supervisor):
        eventually(lambda token=token: accepted_everywhere(stack, token), timeout=60)
    ids = {name: user_id(stack, ops_token, name) for name in ("editor", "reviewer1", "reviewer2", "handler",
                                                               "regulator")}
    tokens = {t: jwt.decode(t, options={"verify_signature": False}) for t in (editor, supervisor)}
    assert all(c["aud"] == PLATFORM_AUDIENCE for c in tokens.values())

    # delegations in the review service that the changes below must end
    principal = client(stack, "review", login(stack, "reviewer3"))
    start = datetime.now(timezone.utc)
    window = {"starts_at": start.isoformat(), "ends_at": (start + timedelta(days=2)).isoformat(),
              "reason": "出差期间代审"}
    delegation = {"to_user_id": ids["editor"], "role": "chief_editor", **window}
    lent_to_editor = eventually(lambda: (lambda r: r.json() if r.status_code == 201 else None)(
        principal.post("/v1/delegations", json=delegation)), timeout=60)
    lent_by_reviewer1 = client(stack, "review", reviewer1).post("/v1/delegations", json={
        "to_user_id": ids["reviewer2"], "role": "section_head", **window})
    assert lent_by_reviewer1.status_code == 201, lent_by_reviewer1.text

    def revoked_by_account(delegation_id: str) -> bool:
        listed = principal.get("/v1/delegations", params={"limit": 200}).json()["items"]
        found = next(d for d in listed if d["id"] == delegation_id)
        return not found["active"] and found["revoked_by"] == "account"

    # a deactivated user (REST): refused everywhere, cannot sign in, and the review service's
    # users read model no longer takes them as a delegate; what was lent to them ends
    r = ops.post(f"/v1/users/{ids['editor']}/deactivate", json={"reason": "调离岗位"})
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    eventually(lambda: refused_everywhere(stack, editor), timeout=60)
    assert_error(client(stack, "account").post("/v1/auth/token", data={"username": "editor",
                                                                          "password": DEMO_PASSWORD}),
                 401, "invalid_grant")
    eventually(lambda: revoked_by_account(lent_to_editor["id"]), timeout=60)
    eventually(lambda: principal.post("/v1/delegations", json=delegation).json()["error"]["code"]
               == "delegate_not_in_unit", timeout=60)

    # roles changed (gRPC): the old token is refused everywhere; a new sign-in carries the new roles
    async def set_roles():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            return await pb_grpc.AccountServiceStub(channel).SetUserRoles(pb.SetUserRolesRequest(
                id=ids["reviewer1"], roles=["editor"], reason="调任采编"), metadata=md(ops_token))

    changed = asyncio.run(set_roles())
    assert list(changed.roles) == ["editor"] and changed.active
    eventually(lambda: refused_everywhere(stack, reviewer1), timeout=60)
    eventually(lambda: revoked_by_account(lent_by_reviewer1.json()["id"]), timeout=60)  # no longer theirs to lend
    # (a token made in the second of the change is refused too: poll with new sign-ins)
    eventually(lambda: accepted_everywhere(stack, login(stack, "reviewer1")), timeout=60)
    assert "editor" in jwt.decode(login(stack, "reviewer1"), options={"verify_signature": False})["roles"]

    # password reset, REST and gRPC: the user's tokens end everywhere; the new password signs in
    r = ops.post(f"/v1/users/{ids['handler']}/password", json={"password": "new-handler-pass-2026"})
    assert r.status_code == 200, r.text

    async def reset():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            return await pb_grpc.AccountServiceStub(channel).ResetUserPassword(pb.ResetUserPasswordRequest(
                id=ids["regulator"], password="new-regulator-pass-2026"), metadata=md(ops_token))

    asyncio.run(reset())
    eventually(lambda: refused_everywhere(stack, handler), timeout=60)
    eventually(lambda: refused_everywhere(stack, regulator), timeout=60)
    assert login(stack, "handler", "new-handler-pass-2026")

    # a key retired with grace_s 0, by gRPC then by REST: its tokens are refused everywhere
    k1 = kid_of(supervisor)

    async def rotate():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            return await pb_grpc.AccountServiceStub(channel).RotateSigningKeys(
                pb.RotateSigningKeysRequest(grace_s=0), metadata=md(ops_token))

    k2 = asyncio.run(rotate()).kid
    assert k2 != k1
    eventually(lambda: refused_everywhere(stack, supervisor), timeout=60)
    eventually(lambda: refused_everywhere(stack, ops_token), timeout=60)
    ops_token = login(stack, "ops")
    supervisor2 = login(stack, "supervisor")
    assert kid_of(supervisor2) == k2
    eventually(lambda: accepted_everywhere(stack, supervisor2), timeout=60)
    r = client(stack, "account", ops_token).post("/v1/auth/keys/rotate", json={"grace_s": 0})
    assert r.status_code == 200, r.text
    eventually(lambda: refused_everywhere(stack, supervisor2), timeout=60)
    eventually(lambda: accepted_everywhere(stack, login(stack, "supervisor")), timeout=60)


# --- user administration: the account service, REST and gRPC ----------------------------------

@pytest.fixture
def account(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account",), env=FAST)


def audit_of(http: httpx.Client, uid: str) -> list[dict]:
    r = http.get(f"/v1/users/{uid}/audit")
    assert r.status_code == 200, r.text
    return r.json()["items"]


def other_unit_principal(stack, ops: httpx.Client) -> str:
    unit = ops.get("/v1/units").json()["items"][0]
    other = ops.post("/v1/units", json={"name": "省发展改革委", "region_id": unit["region_id"]}).json()
    r = ops.post("/v1/users", json={"username": "other-principal", "password": "other-pass-2026",
                                    "unit_id": other["id"], "roles": ["principal"]})
    assert r.status_code == 201, r.text
    return login(stack, "other-principal", "other-pass-2026")


def test_user_administration_over_rest(account):
    stack = account
    ops_token = login(stack, "ops")
    ops, acc = client(stack, "account", ops_token), client(stack, "account")
    principal = client(stack, "account", login(stack, "reviewer3"))  # principal and chief editor
    editor_token = login(stack, "editor")
    ids = {name: user_id(stack, ops_token, name) for name in ("editor", "ops", "regulator", "reviewer1", "reviewer3")}
    eid = ids["editor"]
    signed = acc.post("/v1/auth/token", data={"username": "editor", "password": DEMO_PASSWORD}).json()

    # who may: ops by reach, the unit's principal for unit roles only, nobody on themselves
    assert_error(client(stack, "account", editor_token).post(f"/v1/users/{ids['reviewer1']}/deactivate",
                                                             json={"reason": "r"}), 403, "role_required")
    stranger = client(stack, "account", other_unit_principal(stack, ops))
    assert_error(stranger.post(f"/v1/users/{eid}/deactivate", json={"reason": "r"}), 403, "other_unit")
    for target in ("ops", "regulator"):
        assert_error(principal.post(f"/v1/users/{ids[target]}/deactivate", json={"reason": "r"}), 403,
                     "role_not_grantable")
    for roles in (["ops"], ["regulator"], ["principal"], ["editor", "supervisor"]):
        assert_error(principal.put(f"/v1/users/{eid}/roles", json={"roles": roles}), 403, "role_not_grantable")
    assert_error(ops.post(f"/v1/users/{ids['ops']}/deactivate", json={"reason": "r"}), 403, "own_user")
    assert_error(ops.put(f"/v1/users/{ids['ops']}/roles", json={"roles": ["editor"]}), 403, "own_user")

    # bad input: a stable code, nothing changes
    for method, path, body, status, code in (
            ("POST", f"/v1/users/{eid}/deactivate", {}, 422, "validation_failed"),
            ("POST", f"/v1/users/{eid}/deactivate", {"reason": ""}, 422, "validation_failed"),
            ("POST", f"/v1/users/{eid}/deactivate", {"reason": "r", "extra": 1}, 422, "validation_failed"),
            ("PUT", f"/v1/users/{eid}/roles", {"roles": []}, 422, "validation_failed"),
            ("PUT", f"/v1/users/{eid}/roles", {"roles": ["root"]}, 422, "validation_failed"),
            ("POST", f"/v1/users/{eid}/password", {"password": "short"}, 422, "validation_failed"),
            ("POST", "/v1/users/nope/deactivate", {"reason": "r"}, 404, "user_not_found"),
            ("PUT", "/v1/users/nope/roles", {"roles": ["editor"]}, 404, "user_not_found"),
            ("GET", "/v1/users/nope", None, 404, "user_not_found")):
        assert_error(ops.request(method, path, json=body), status, code)
    assert audit_of(ops, eid) == []
    unchanged = ops.get(f"/v1/users/{eid}").json()
    assert unchanged["active"] is True and unchanged["roles"] == ["editor"]
    assert client(stack, "account", editor_token).get("/v1/users").status_code == 200

    # the principal deactivates an editor of the unit: tokens, refresh sessions and sign-in end
    r = principal.post(f"/v1/users/{eid}/deactivate", json={"reason": "调离岗位"})
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    assert principal.post(f"/v1/users/{eid}/deactivate", json={"reason": "again"}).status_code == 200  # no change
    assert_error(client(stack, "account", editor_token).get("/v1/users"), 401, "unauthenticated")
    assert_error(acc.post("/v1/auth/token", data={"grant_type": "refresh_token",
                                                  "refresh_token": signed["refresh_token"]}), 401, "invalid_grant")
    assert_error(acc.post("/v1/auth/token", data={"username": "editor", "password": DEMO_PASSWORD}), 401,
                 "invalid_grant")
    assert principal.post(f"/v1/users/{eid}/reactivate", json={}).json()["active"] is True
    fresh = eventually(lambda: (lambda t: t if client(stack, "account", t).get("/v1/users").status_code == 200
                                else None)(login(stack, "editor")))
    assert_error(client(stack, "account", editor_token).get("/v1/users"), 401, "unauthenticated")  # still old

    # roles: the principal grants unit roles; ops any; the old token is refused
    r = principal.put(f"/v1/users/{eid}/roles", json={"roles": ["section_head", "editor", "editor"],
                                                      "reason": "兼任科室负责人"})
    assert r.status_code == 200 and r.json()["roles"] == ["editor", "section_head"], r.text
    assert_error(client(stack, "account", fresh).get("/v1/users"), 401, "unauthenticated")
    assert ops.put(f"/v1/users/{ids['reviewer1']}/roles", json={"roles": ["regulator"]}).status_code == 200

    # password reset by ops: the old password and sessions end, the new one signs in
    signed_in = acc.post("/v1/auth/token", data={"username": "editor", "password": DEMO_PASSWORD}).json()
    assert signed_in["access_token"]
    r = ops.post(f"/v1/users/{eid}/password", json={"password": "reset-pass-2026!", "reason": "忘记密码"})
    assert r.status_code == 200, r.text
    assert_error(acc.post("/v1/auth/token", data={"username": "editor", "password": DEMO_PASSWORD}), 401,
                 "invalid_grant")
    assert_error(acc.post("/v1/auth/token", data={"grant_type": "refresh_token",
                                                  "refresh_token": signed_in["refresh_token"]}), 401, "invalid_grant")
    assert_error(client(stack, "account", signed_in["access_token"]).get("/v1/users"), 401, "unauthenticated")
    assert login(stack, "editor", "reset-pass-2026!")

    # every change audited, chained, never a password or its hash; a created user too
    entries = audit_of(ops, eid)
    assert [e["action"] for e in entries] == ["deactivated", "reactivated", "roles_changed", "password_reset"]
    assert entries[0]["actor"] == ids["reviewer3"] and entries[0]["before"]["active"] is True
    assert entries[0]["after"] == {"username": "editor", "unit_id": entries[0]["after"]["unit_id"],
                                   "roles": ["editor"], "active": False, "reason": "调离岗位"}
    assert entries[2]["before"]["roles"] == ["editor"] and entries[2]["after"]["roles"] == ["editor", "section_head"]
    assert entries[3]["actor"] == ids["ops"] and entries[3]["after"]["password"] == "reset"
    text = json.dumps(entries)
    assert "argon2" not in text and "reset-pass-2026" not in text
    assert ops.get(f"/v1/users/{eid}/audit/verify").json() == {"stream_id": eid, "ok": True, "entries": 4,
                                                                "first_broken": None}
    assert principal.get(f"/v1/users/{eid}/audit").status_code == 200
    assert_error(stranger.get(f"/v1/users/{eid}/audit"), 403, "other_unit")
    made = ops.post("/v1/users", json={"username": "new-editor", "password": "new-editor-2026", "unit_id":
                                       entries[0]["after"]["unit_id"], "roles": ["editor"]}).json()
    assert [e["action"] for e in audit_of(ops, made["id"])] == ["created"]


async def test_user_administration_over_grpc(account):
    stack = account
    ops_token, principal_token = login(stack, "ops"), login(stack, "reviewer3")
    eid, oid = user_id(stack, ops_token, "editor"), user_id(stack, ops_token, "ops")
    editor_token = login(stack, "editor")

    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)

        async def fails(call, status, code):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == status, err.value.details()
            assert dict(err.value.trailing_metadata() or ())["error-code"] == code
            return err.value

        invalid, denied = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED
        await fails(stub.DeactivateUser(pb.DeactivateUserRequest(id=eid, reason="r"), metadata=md(editor_token)),
                    denied, "role_required")
        await fails(stub.SetUserRoles(pb.SetUserRolesRequest(id=eid, roles=["ops"]), metadata=md(principal_token)),
                    denied, "role_not_grantable")
        await fails(stub.DeactivateUser(pb.DeactivateUserRequest(id=oid, reason="r"), metadata=md(principal_token)),
                    denied, "role_not_grantable")
        await fails(stub.ResetUserPassword(pb.ResetUserPasswordRequest(id=oid, password="x" * 12),
                                           metadata=md(ops_token)), denied, "own_user")
        await fails(stub.DeactivateUser(pb.DeactivateUserRequest(id=eid), metadata=md(ops_token)), invalid,
                    "validation_failed")
        await fails(stub.SetUserRoles(pb.SetUserRolesRequest(id=eid, roles=["root"]), metadata=md(ops_token)),
                    invalid, "validation_failed")
        await fails(stub.ResetUserPassword(pb.ResetUserPasswordRequest(id=eid, password="short"),
                                           metadata=md(ops_token)), invalid, "validation_failed")
        await fails(stub.GetUser(pb.GetUserRequest(id="nope"), metadata=md(ops_token)), grpc.StatusCode.NOT_FOUND,
                    "user_not_found")
        assert not (await stub.UserAudit(pb.GetUserRequest(id=eid), metadata=md(ops_token))).items
        assert (await stub.GetUser(pb.GetUserRequest(id=eid), metadata=md(editor_token))).active

        done = await stub.DeactivateUser(pb.DeactivateUserRequest(id=eid, reason="离职"), metadata=md(principal_token))
        assert not done.active
        await fails(stub.ListUsers(pb.ListRequest(), metadata=md(editor_token)), grpc.StatusCode.UNAUTHENTICATED,
                    "unauthenticated")
        assert (await stub.ReactivateUser(pb.ReactivateUserRequest(id=eid), metadata=md(principal_token))).active
        roles = await stub.SetUserRoles(pb.SetUserRolesRequest(id=eid, roles=["editor", "handler"], reason="兼办"),
                                        metadata=md(principal_token))
        assert sorted(roles.roles) == ["editor", "handler"]
        await stub.ResetUserPassword(pb.ResetUserPasswordRequest(id=eid, password="grpc-reset-2026"),
                                     metadata=md(ops_token))
        trail = await stub.UserAudit(pb.GetUserRequest(id=eid), metadata=md(principal_token))
        assert [e.action for e in trail.items] == ["deactivated", "reactivated", "roles_changed", "password_reset"]
        assert trail.ok and trail.first_broken_seq == 0
        assert trail.items[0].after["reason"] == "离职" and trail.items[0].before["active"] is True
    assert login(stack, "editor", "grpc-reset-2026")


# --- signing keys sealed at rest ----------------------------------------------------------------

def test_signing_keys_are_sealed_at_rest_and_the_key_encryption_key_rotates(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",), env={"ACCOUNT_KEY_ENCRYPTION_KEY": KEK_A})
    keys = SigningKey.__table__
    a, b = KeySealer(parse_kek(KEK_A)), KeySealer(parse_kek(KEK_B))

    def stored() -> dict[str, str]:
        return dict(db_exec(stack, select(keys.c.kid, keys.c.private_pem)))

    rows = stored()
    assert rows and all(v.startswith(f"kek1:{a.current_id}:") and "PRIVATE KEY" not in v for v in rows.values())
    token = login(stack, "editor")

    # a row in clear (as written before sealing) is sealed at the next start; its tokens still verify
    (kid, sealed), = rows.items()
    clear = a.open(kid, sealed)
    assert db_exec(stack, update(keys).where(keys.c.kid == kid).values(private_pem=clear)) == 1
    stack.restart("account")
    assert stored()[kid].startswith(f"kek1:{a.current_id}:")
    assert client(stack, "account", token).get("/v1/users").status_code == 200

    # a new key encryption key, the old one kept as previous: every key sealed again with the new one
    stack.services["account"].env.update({"ACCOUNT_KEY_ENCRYPTION_KEY": KEK_B,
                                          "ACCOUNT_KEY_ENCRYPTION_KEY_PREVIOUS": KEK_A})
    stack.restart("account")
    assert all(v.startswith(f"kek1:{b.current_id}:") for v in stored().values())
    assert client(stack, "account", token).get("/v1/users").status_code == 200
    ops = client(stack, "account", login(stack, "ops"))
    assert ops.post("/v1/auth/keys/rotate").status_code == 200
    assert all(v.startswith(f"kek1:{b.current_id}:") for v in stored().values() if v) and len(stored()) == 2
    assert b.open(kid, stored()[kid]) == clear

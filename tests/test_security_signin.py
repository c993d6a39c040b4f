"""Issue 16, "Tokens and sign-in": sign-in and client addresses, as an attacker would try them.

- One address cannot lock officials out: an address is slowed (429 with Retry-After on its
  failures), never locked, and a correct password from it still signs in; the per-username
  lock stays.
- The client address is believed from X-Forwarded-For (REST) or `x-forwarded-for` metadata
  (gRPC) only when the peer is a trusted proxy (`<SERVICE>_TRUSTED_PROXIES`), read right to left.
- Password checks run in a bounded pool, outside any database transaction; a full pool answers
  429 `signin_busy` with Retry-After; 32 concurrent sign-ins at the production cost stay under
  the pod's memory limit (measured as the process's peak RSS, VmHWM).
- The public gRPC endpoints of petition and content limit by the same trusted client address as REST.
- The optional TOTP second factor (RFC 6238): enrol, confirm, sign in with a code, no code twice,
  required for ops and regulator in production (an enrolment ticket for those not enrolled).

Real processes over real HTTP and gRPC, both databases; no mocks; nothing asserts on timing."""
from __future__ import annotations

import asyncio
import concurrent.futures
import re
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia.content.v1 import content_pb2 as cpb
from govmedia.content.v1 import content_pb2_grpc as cpb_grpc
from govmedia.petition.v1 import petition_pb2 as ppb
from govmedia.petition.v1 import petition_pb2_grpc as ppb_grpc
from sqlalchemy import insert, update

from govmedia_kit.client_address import TrustedProxies, grpc_peer_host
from govmedia_kit.limits import bucket
from govmedia_kit.db import utcnow
from services.account import totp
from services.account.signin_models import SigninFailure
from tests.conftest import drop_pg_databases, fresh_pg_databases
from tests.helpers import DEMO_PASSWORD, assert_error, auth, client, service_db
from tests.test_account_signin import age_failures, db_exec

ROOT = Path(__file__).resolve().parents[1]
TRUST_LOCAL = {"ACCOUNT_TRUSTED_PROXIES": "127.0.0.1"}


def sign_in(acc: httpx.Client, username: str, password: str, forwarded: str | None = None, **form) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return acc.post("/v1/auth/token", data={"username": username, "password": password, **form}, headers=headers)


async def failure_counts(stack) -> dict[str, int]:
    rows = await service_db(stack, "account", "SELECT subject, failures FROM signin_failures WHERE subject LIKE 'addr:%'")
    return {subject[5:]: failures for subject, failures in rows}


def trailers(err: grpc.aio.AioRpcError) -> dict:
    return dict(err.trailing_metadata() or ())


# --- the client address (pure rules) ---------------------------------------------------------

def test_forwarded_for_is_read_right_to_left_and_only_from_trusted_proxies():
    proxies = TrustedProxies.parse("10.0.0.0/8, 127.0.0.1, fd00::/8")
    # an untrusted peer: its header is never believed
    assert proxies.client("198.51.100.7", "203.0.113.1") == "198.51.100.7"
    assert TrustedProxies.parse("").client("127.0.0.1", "203.0.113.1") == "127.0.0.1"
    # the ingress appended the client; what the client wrote to its left is not believed
    assert proxies.client("10.1.2.3", "1.2.3.4, 203.0.113.9") == "203.0.113.9"
    assert proxies.client("10.1.2.3", ["1.2.3.4", "203.0.113.9, 10.9.9.9"]) == "203.0.113.9"  # two headers, two hops
    assert proxies.client("10.1.2.3", "10.4.4.4, 10.9.9.9") == "10.4.4.4"  # every hop is ours
    assert proxies.client("10.1.2.3", "") == "10.1.2.3"
    # garbage where our proxy would have written an address ends the walk at our last hop
    assert proxies.client("10.1.2.3", "203.0.113.9, not-an-ip") == "10.1.2.3"
    assert proxies.client("10.1.2.3", "[2001:db8::5]:443") == "2001:db8::5"
    assert proxies.client("10.1.2.3", "203.0.113.9:5123") == "203.0.113.9"
    assert proxies.client("fd00::1", "2001:db8::7") == "2001:db8::7"
    # a dual-stack listener sees an IPv4 proxy as IPv4-mapped: still our proxy
    assert proxies.client("::ffff:10.1.2.3", "203.0.113.9") == "203.0.113.9"
    # limiters count an IPv6 client by its /64 (it may pick any address in it)
    assert bucket("2001:db8:1:2::5") == bucket("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert bucket("::ffff:203.0.113.9") == "203.0.113.9" and bucket("key:abc") == "key:abc"
    assert grpc_peer_host("ipv4:10.0.0.7:51234") == "10.0.0.7"
    assert grpc_peer_host("ipv6:[::1]:51234") == "::1"
    assert grpc_peer_host("ipv6:%5B::1%5D:51234") == "::1"
    with pytest.raises(ValueError, match="not-a-cidr"):
        TrustedProxies.parse("10.0.0.0/8,not-a-cidr")


def test_account_settings_refuse_a_bad_proxy_list_and_size_the_hash_pool():
    from services.account.service import load_settings
    from services.account.signin import hash_slots_for

    with pytest.raises(ValueError, match="trusted proxies"):
        load_settings(trusted_proxies="10.0.0.0/33")
    # 192 MiB for the rest of the process, 65 MiB a check: the prod pod (768Mi), the base
    # (512Mi), the dev pod (384Mi)
    assert hash_slots_for(768, 65536, 192) == 8
    assert hash_slots_for(512, 65536, 192) == 4
    assert hash_slots_for(384, 65536, 192) == 2
    assert hash_slots_for(200, 65536, 192) == 1  # never none
    assert hash_slots_for(None, 65536, 192) == 4


def test_totp_matches_rfc_6238():
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of RFC 6238's SHA-1 seed "12345678901234567890"
    # RFC 6238 Appendix B (8 digits there; an authenticator shows the last 6)
    for t, code in ((59, "94287082"), (1111111109, "07081804"), (1234567890, "89005924"), (2000000000, "69279037")):
        assert totp.totp(secret, t) == code[-6:]
    assert totp.matching_step(secret, "287082", 59) == 1
    assert totp.matching_step(secret, "287082", 59 + 30) == 1  # one step of drift
    assert totp.matching_step(secret, "287082", 59 + 90) is None
    assert totp.matching_step(secret, "28708２", 59) is None  # a full-width digit is not a digit here
    uri = totp.provisioning_uri(secret, "ops", "政务新媒体平台")
    assert uri.startswith("otpauth://totp/") and "secret=" + secret in uri and "period=30" in uri


# --- one address cannot lock officials out ------------------------------------------------------

def test_one_address_is_slowed_never_locked_and_a_correct_password_still_signs_in(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",), env=TRUST_LOCAL)
    acc = client(stack, "account")
    ingress_client = "203.0.113.50"
    # 99 failures from one address over many usernames (as the province's whole traffic did
    # when every sign-in came from the ingress), most of them written straight into the table
    db_exec(stack, insert(SigninFailure.__table__).values(subject=f"addr:{ingress_client}", failures=97,
                                                          last_failed_at=utcnow()))
    for i in range(3):  # failures 98 to 100: slowed, with a Retry-After, never locked
        r = sign_in(acc, f"spray{i}", "Password1!", forwarded=ingress_client)
        body = assert_error(r, 429, "signin_throttled")
        assert int(r.headers["retry-after"]) == body["error"]["details"]["retry_after_s"] > 0
    counts = asyncio.run(failure_counts(stack))
    assert counts[ingress_client] == 100
    # a correct password from that address signs in, over REST and gRPC, and again right after
    assert sign_in(acc, "editor", DEMO_PASSWORD, forwarded=ingress_client).status_code == 200
    assert sign_in(acc, "reviewer1", DEMO_PASSWORD, forwarded=ingress_client).status_code == 200

    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            md = (("x-forwarded-for", ingress_client),)
            ok = await stub.IssueToken(pb.IssueTokenRequest(username="ops", password=DEMO_PASSWORD), metadata=md)
            assert ok.access_token
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IssueToken(pb.IssueTokenRequest(username="spray9", password="x"), metadata=md)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert trailers(err.value)["error-code"] == "signin_throttled"
            assert int(trailers(err.value)["retry-after"]) > 0
    asyncio.run(over_grpc())
    # another address is not slowed at all
    assert_error(sign_in(acc, "spray1", "Password1!", forwarded="203.0.113.51"), 401, "invalid_grant")

    # the per-username protection stays: five failures slow the username, ten lock it, from any
    # addresses, and then the right password does not help either
    for i in range(5):
        assert_error(sign_in(acc, "handler", "wrong", forwarded=f"198.51.100.{i}"), 401, "invalid_grant")
    assert_error(sign_in(acc, "handler", DEMO_PASSWORD, forwarded="198.51.100.99"), 429, "signin_throttled")
    table = SigninFailure.__table__
    db_exec(stack, update(table).where(table.c.subject == "user:handler").values(failures=9))
    age_failures(stack, "user:handler", 3600)
    assert_error(sign_in(acc, "handler", "wrong", forwarded="198.51.100.7"), 401, "invalid_grant")
    assert_error(sign_in(acc, "handler", DEMO_PASSWORD, forwarded="198.51.100.8"), 429, "account_locked")


# --- the client address over real HTTP and gRPC -----------------------------------------------

def test_forwarded_for_counts_only_from_a_trusted_proxy(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",))

    def fail_from(forwarded: str, username: str = "nobody") -> None:
        r = client(stack, "account").post("/v1/auth/token", data={"username": username, "password": "x"},
                                          headers={"X-Forwarded-For": forwarded})
        assert r.status_code in (401, 429), r.text

    async def fail_over_grpc(forwarded: str) -> None:
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.IssueToken(pb.IssueTokenRequest(username="nobody2", password="x"),
                                      metadata=(("x-forwarded-for", forwarded),))

    # without the setting, 127.0.0.1 is not a proxy of ours: the header is the client's own word
    fail_from("198.51.100.1")
    fail_from("198.51.100.2, 198.51.100.3")
    asyncio.run(fail_over_grpc("198.51.100.4"))
    assert asyncio.run(failure_counts(stack)) == {"127.0.0.1": 3}

    # with it, the right-most hop that is not ours is the client, over REST and gRPC
    stack.services["account"].env.update(TRUST_LOCAL)
    stack.restart("account")
    fail_from("198.51.100.1")
    fail_from("6.6.6.6, 198.51.100.2")  # the client wrote 6.6.6.6; the ingress appended 198.51.100.2
    fail_from("198.51.100.2, 127.0.0.1")  # a second hop of ours is skipped
    asyncio.run(fail_over_grpc("6.6.6.6, 198.51.100.4"))
    counts = asyncio.run(failure_counts(stack))
    assert counts == {"127.0.0.1": 3, "198.51.100.1": 1, "198.51.100.2": 2, "198.51.100.4": 1}, counts


# --- the public gRPC endpoints limit by the trusted client address -----------------------------

PUBLIC_LIMITS = {"PETITION_INTAKE_RATE_PER_MINUTE": "1", "PETITION_TRACK_RATE_PER_MINUTE": "1",
                 "CONTENT_CLUE_INTAKE_RATE_PER_MINUTE": "1", "CONTENT_CLUE_TRACK_RATE_PER_MINUTE": "1"}
TRUSTED = {"PETITION_TRUSTED_PROXIES": "127.0.0.1", "CONTENT_TRUSTED_PROXIES": "127.0.0.1"}


def _grpc_calls(stack):
    """(limiter, [call(forwarded) → 'limited' | 'passed'] for each public gRPC endpoint it
    guards); each limiter once a minute per client address (PUBLIC_LIMITS)."""
    async def call(service: str, method: str, request, forwarded: str) -> str:
        async with grpc.aio.insecure_channel(stack.services[service].grpc_target) as channel:
            stub = (ppb_grpc.PetitionServiceStub if service == "petition" else cpb_grpc.ContentServiceStub)(channel)
            try:
                await getattr(stub, method)(request, metadata=(("x-forwarded-for", forwarded),), timeout=15)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert trailers(err)["error-code"] == "rate_limited" and int(trailers(err)["retry-after"]) >= 1
                    return "limited"
            return "passed"

    def runner(service: str, method: str, request):
        return lambda forwarded: asyncio.run(call(service, method, request, forwarded))

    code = "ABCDEFGHJKMN"
    return [
        ("petition intake", [runner("petition", "CreatePetition", ppb.CreatePetitionRequest())]),
        ("petition tracking", [runner("petition", "Track", ppb.TrackRequest(tracking_code=code)),
                               runner("petition", "CitizenAct", ppb.CitizenActRequest(tracking_code=code,
                                                                                      action="rate", rating=5))]),
        ("clue intake", [runner("content", "SubmitClue", cpb.SubmitClueRequest())]),
        ("clue tracking", [runner("content", "TrackClue", cpb.TrackClueRequest(tracking_code=code))]),
    ]


def _rest_calls(stack):
    def runner(service, method, path, **kw):
        def run(forwarded: str) -> str:
            r = client(stack, service).request(method, path, headers={"X-Forwarded-For": forwarded}, **kw)
            if r.status_code == 429:
                assert_error(r, 429, "rate_limited")
                return "limited"
            return "passed"
        return run

    return {
        "petition intake": runner("petition", "POST", "/v1/petitions", json={}),
        "petition tracking": runner("petition", "GET", "/v1/petitions/track/ABCDEFGHJKMN"),
        "clue intake": runner("content", "POST", "/v1/clues", json={}),
        "clue tracking": runner("content", "GET", "/v1/clues/track/ABCDEFGHJKMN"),
    }


def test_public_grpc_endpoints_limit_by_the_trusted_client_address(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account", "petition", "content"), env={**PUBLIC_LIMITS, **TRUSTED})
    rest = _rest_calls(stack)
    for limiter, calls in _grpc_calls(stack):
        # REST: one client's budget is spent, another client behind the same ingress is not
        assert [rest[limiter](a) for a in ("6.6.6.6, 198.51.100.1", "198.51.100.1", "198.51.100.2")] == \
            ["passed", "limited", "passed"], limiter
        # gRPC, by the x-forwarded-for metadata of the trusted peer, each endpoint of the limiter
        for i, call in enumerate(calls):
            a, b = f"203.0.113.{10 + i}", f"203.0.113.{20 + i}"
            assert [call(a), call(a), call(b)] == ["passed", "limited", "passed"], (limiter, i)

    # without the setting the header and the metadata are the caller's own word: one client
    for name in ("petition", "content"):
        for key in TRUSTED:
            stack.services[name].env.pop(key, None)
        stack.restart(name)
    rest = _rest_calls(stack)
    for limiter, calls in _grpc_calls(stack):
        assert [rest[limiter](a) for a in ("198.51.100.1", "198.51.100.2")] == ["passed", "limited"], limiter
        assert [call("203.0.113.99") for call in calls] == ["limited"] * len(calls), limiter


# --- the bounded pool of password checks --------------------------------------------------------

async def _no_transaction_holds(db_backend: str, tmp_path, urls: dict, subject: str) -> None:
    """Another connection takes SQLite's write lock, or PostgreSQL's row lock on the username's
    failure row, at once (NOWAIT): nothing of the sign-in's is holding a transaction open."""
    import sqlite3

    import asyncpg

    if db_backend == "sqlite":
        db = sqlite3.connect(tmp_path / "account.db", timeout=0)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO signin_failures (subject, failures) VALUES ('user:probe', 0)")
        finally:
            db.rollback()
            db.close()
        return
    conn = await asyncpg.connect(urls["account"].replace("postgresql+asyncpg://", "postgresql://"))
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"INSERT INTO signin_failures (subject, failures) VALUES ('{subject}', 0) "
                           "ON CONFLICT DO NOTHING")
        await conn.fetch(f"SELECT * FROM signin_failures WHERE subject = '{subject}' FOR UPDATE NOWAIT")
        await tx.rollback()
    finally:
        await conn.close()


async def test_password_checks_wait_for_a_slot_outside_any_transaction(db_backend, tmp_path):
    """In-process, on one database: with the pool's only slot taken, a sign-in waits for it
    with no transaction open; it checks the password with none open either (another connection
    takes the write lock / the username's row lock at once); it completes when the slot frees.
    A replica whose pool is full and queue closed answers 429 signin_busy, counting nothing."""
    from govmedia_kit.runtime import Runtime
    from services.account import signin
    from services.account.models import Region, Unit, User
    from services.account.service import build_spec, load_settings
    from services.account.tokens import Passwords

    urls = await asyncio.to_thread(fresh_pg_databases, ["account"]) if db_backend == "postgres" else {}
    url = urls.get("account", f"sqlite+aiosqlite:///{tmp_path / 'account.db'}")
    spec = build_spec()
    cheap = dict(database_url=url, data_dir=tmp_path, password_hash_memory_kib=19456, password_hash_time_cost=2,
                 password_hash_parallelism=1, password_hash_slots=1)
    a = Runtime(spec, load_settings(**cheap, password_hash_queue_s=30))
    b = Runtime(spec, load_settings(**cheap, password_hash_queue_s=0))
    try:
        await a.db.migrate(spec.migrations_dir)
        await signin.start_keyring(a)
        await signin.start_keyring(b)
        async with a.db.transaction() as s:
            region = Region.new("示范省", "province")
            s.add(region)
            await s.flush()
            unit = Unit(name="省政府办公厅", region_id=region.id, kind="government")
            s.add(unit)
            await s.flush()
            # a slow hash (40 passes), so the check is still running when the probe comes
            s.add(User(username="u1", password_hash=Passwords(19456, 40, 1).hash("pw-123456789"), unit_id=unit.id,
                       roles=["editor"]))

        async def streak() -> int | None:
            from services.account.signin_models import SigninFailure

            async with a.db.session() as s:
                row = await s.get(SigninFailure, "user:u1", populate_existing=True)
                return row.failures if row else None

        pool = signin.hash_pool(a)
        assert pool.slots == 1
        slot = pool.slot()
        await slot.__aenter__()  # the only slot taken
        waiting = asyncio.create_task(signin.issue_token(a, "password", "u1", "pw-123456789", address="198.51.100.1"))
        while pool.waiting == 0:
            await asyncio.sleep(0.01)
        await _no_transaction_holds(db_backend, tmp_path, urls, "user:u1")
        assert await streak() is None  # nothing counted before the slot
        await slot.__aexit__(None, None, None)
        while not (pool.in_use == 1 and await streak() == 1) and not waiting.done():
            await asyncio.sleep(0.005)
        # counted in advance, then checked with no transaction open
        await _no_transaction_holds(db_backend, tmp_path, urls, "user:u1")
        issued = await waiting
        assert issued.access_token and issued.refresh_token
        assert await streak() is None  # the success ended the streak

        # replica b: its only slot taken and no queue: 429 signin_busy with Retry-After, nothing counted
        full = signin.hash_pool(b)
        async with full.slot():
            with pytest.raises(signin.ThrottledError) as err:
                await signin.issue_token(b, "password", "u1", "wrong-password", address="198.51.100.1")
            # a new password's hash (a user created, a password reset) takes a slot as well
            with pytest.raises(signin.ThrottledError):
                await signin.hash_password(b, "another-pass-2026")
        assert err.value.code == "signin_busy" and err.value.status == 429 and err.value.retry_after >= 1
        assert err.value.headers["Retry-After"] == str(err.value.retry_after)
        assert await streak() is None
    finally:
        await a.db.dispose()
        await b.db.dispose()
        if urls:
            await asyncio.to_thread(drop_pg_databases, urls)


def pod_memory_limit_mib(manifest: str) -> int:
    """The account container's memory limit in a manifest or overlay patch."""
    for doc in yaml.safe_load_all((ROOT / manifest).read_text()):
        if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "account":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                if c["name"] == "account":
                    raw = c["resources"]["limits"]["memory"]
                    value, unit = re.fullmatch(r"(\d+)(Mi|Gi)", raw).groups()
                    return int(value) * (1024 if unit == "Gi" else 1)
    raise AssertionError(f"no account container in {manifest}")


# The account pod's memory limit in each overlay (and the base the overlays start from).
POD_LIMITS = {"dev": "deploy/k8s/overlays/dev/small.yaml", "base": "deploy/k8s/base/services/account.yaml",
              "prod": "deploy/k8s/overlays/prod/ha-services.yaml"}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


PRODUCTION_COST = {"ACCOUNT_PASSWORD_HASH_MEMORY_KIB": "65536", "ACCOUNT_PASSWORD_HASH_TIME_COST": "3",
                   "ACCOUNT_PASSWORD_HASH_PARALLELISM": "4"}


def concurrent_sign_ins(stack, n: int = 32) -> list[httpx.Response]:
    barrier = concurrent.futures.ThreadPoolExecutor(n)
    base = stack.services["account"].base_url
    names = ["editor", "ops", "reviewer1", "reviewer2", "reviewer3", "handler", "supervisor", "regulator"]

    def one(i: int) -> httpx.Response:
        return httpx.post(f"{base}/v1/auth/token", data={"username": names[i % len(names)],
                                                         "password": DEMO_PASSWORD}, timeout=120)
    try:
        return list(barrier.map(one, range(n)))
    finally:
        barrier.shutdown()


def test_32_concurrent_sign_ins_stay_under_the_pods_memory_limit(stack_factory, db_backend):
    """For the smallest and the largest pod (dev 384Mi: 2 checks at once; prod 768Mi: 8), 32
    sign-ins at once at the production cost: each signs in or is told to come back (429
    signin_busy, Retry-After), and the process's peak RSS stays under the pod's limit. (Without
    the bound, the default thread pool ran cpu+4 hashes at once: 6 × 64 MiB on two cores, more
    on a bigger node, past the dev pod's limit; bench/signin_memory.py prints the figures.)"""
    stack = None
    for overlay in ("dev", "prod"):
        limit = pod_memory_limit_mib(POD_LIMITS[overlay])
        env = {**PRODUCTION_COST, "ACCOUNT_MEMORY_LIMIT_MIB": str(limit)}
        if stack is None:
            stack = stack_factory(db_backend, only=("account",), env=env)
        else:
            stack.services["account"].env.update(env)
            stack.restart("account")
        pid = stack.services["account"].proc.pid
        answers = concurrent_sign_ins(stack, 32)
        peak = peak_rss_mib(pid)
        print(f"{overlay}: account peak RSS after 32 concurrent sign-ins at 64 MiB Argon2id: {peak:.0f} MiB "
              f"(pod limit {limit} MiB); {sum(r.status_code == 200 for r in answers)} signed in")
        assert {r.status_code for r in answers} <= {200, 429}, [r.text for r in answers if r.status_code != 200]
        assert any(r.status_code == 200 for r in answers)
        for r in answers:
            if r.status_code == 429:
                assert_error(r, 429, "signin_busy")
                assert int(r.headers["retry-after"]) >= 1
        assert peak < limit, f"{overlay}: peak RSS {peak:.0f} MiB ≥ the pod's limit {limit} MiB"


# --- the second factor (TOTP) -------------------------------------------------------------------

def code_after(secret: str, steps: int = 0) -> str:
    return totp.totp(secret, time.time() + steps * totp.STEP_S)


def test_totp_enrol_confirm_sign_in_no_reuse_and_required_roles(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=("account",),
                          env={**TRUST_LOCAL, "ACCOUNT_TOTP_REQUIRED_ROLES": "ops,regulator"})
    acc = client(stack, "account")

    # ops without a second factor: the right password gives no token, a ticket to enrol with
    first = sign_in(acc, "ops", DEMO_PASSWORD)
    body = assert_error(first, 403, "totp_enrolment_required")
    ticket = body["error"]["details"]["enrolment_ticket"]
    assert "access_token" not in first.text and body["error"]["details"]["enrol"] == "/v1/auth/totp/enrol"
    # the ticket is good for enrolling only: not a bearer token anywhere
    assert_error(acc.get("/v1/users", headers=auth(ticket)), 401, "unauthenticated")
    assert_error(acc.post("/v1/auth/totp/enrol", json={"enrolment_ticket": "forged"}), 401,
                 "invalid_enrolment_ticket")
    assert_error(acc.post("/v1/auth/totp/enrol", json={}), 401, "unauthenticated")
    assert_error(acc.post("/v1/auth/totp/enrol", json={"enrolment_ticket": ticket, "extra": 1}), 422,
                 "validation_failed")
    enrolled = acc.post("/v1/auth/totp/enrol", json={"enrolment_ticket": ticket})
    assert enrolled.status_code == 200, enrolled.text
    assert enrolled.headers["cache-control"] == "no-store"
    secret = enrolled.json()["secret"]
    assert enrolled.json()["otpauth_uri"].startswith("otpauth://totp/") and f"secret={secret}" in enrolled.json()[
        "otpauth_uri"]
    # still pending: sign-in still asks to enrol (a new ticket replaces the old one); a wrong or
    # malformed first code changes nothing
    ticket = assert_error(sign_in(acc, "ops", DEMO_PASSWORD), 403,
                          "totp_enrolment_required")["error"]["details"]["enrolment_ticket"]
    assert_error(acc.post("/v1/auth/totp/confirm", json={"enrolment_ticket": ticket, "code": "12345a"}), 422,
                 "validation_failed")
    wrong = f"{(int(code_after(secret)) + 1) % 1000000:06d}"
    assert_error(acc.post("/v1/auth/totp/confirm", json={"enrolment_ticket": ticket, "code": wrong}), 422,
                 "invalid_totp")
    ticket = sign_in(acc, "ops", DEMO_PASSWORD).json()["error"]["details"]["enrolment_ticket"]  # a fresh one
    confirmed = acc.post("/v1/auth/totp/confirm", json={"enrolment_ticket": ticket, "code": code_after(secret)})
    assert confirmed.status_code == 200 and confirmed.json()["enrolled"], confirmed.text
    # the ticket is spent with the confirmation
    assert_error(acc.post("/v1/auth/totp/enrol", json={"enrolment_ticket": ticket}), 401, "invalid_enrolment_ticket")

    # sign-in now needs the code; the confirming code is spent; a new one works once
    assert_error(sign_in(acc, "ops", DEMO_PASSWORD), 401, "totp_required")
    assert_error(sign_in(acc, "ops", DEMO_PASSWORD, otp=code_after(secret)), 401, "invalid_totp")
    next_code = code_after(secret, 1)
    ok = sign_in(acc, "ops", DEMO_PASSWORD, otp=next_code)
    assert ok.status_code == 200, ok.text
    assert_error(sign_in(acc, "ops", DEMO_PASSWORD, otp=next_code), 401, "invalid_totp")  # never twice
    assert_error(sign_in(acc, "ops", "wrong-password", otp=code_after(secret, 1)), 401, "invalid_grant")
    assert_error(sign_in(acc, "ops", DEMO_PASSWORD, otp="1" * 17), 422, "validation_failed")  # changes nothing
    ops = client(stack, "account", ok.json()["access_token"])
    # enrolled: no second enrolment, and ops may not turn theirs off
    assert_error(ops.post("/v1/auth/totp/enrol", json={}), 409, "totp_already_enrolled")
    assert_error(ops.post("/v1/auth/totp/disable", json={"code": "000000"}), 409, "totp_required_for_role")

    # an editor is not required to, may opt in with a token, and turn it off with a code
    editor_token = sign_in(acc, "editor", DEMO_PASSWORD).json()["access_token"]
    editor = client(stack, "account", editor_token)
    assert_error(editor.post("/v1/auth/totp/disable", json={"code": "000000"}), 409, "totp_not_enrolled")
    assert_error(editor.post("/v1/auth/totp/confirm", json={"code": "000000"}), 409, "totp_not_pending")
    e_secret = editor.post("/v1/auth/totp/enrol", json={}).json()["secret"]
    assert editor.post("/v1/auth/totp/confirm", json={"code": code_after(e_secret)}).json()["enrolled"]
    assert_error(sign_in(acc, "editor", DEMO_PASSWORD), 401, "totp_required")
    assert sign_in(acc, "editor", DEMO_PASSWORD, otp=code_after(e_secret, 1)).status_code == 200
    # turning it off needs a code not used yet: a step before the last one used is spent too
    assert_error(editor.post("/v1/auth/totp/disable", json={"code": code_after(e_secret, -1)}), 422, "invalid_totp")

    # ops reset another user's second factor (audited); not their own; not anyone's without reach
    editor_id = editor.get("/v1/users").json()["items"]
    editor_id = next(u["id"] for u in editor_id if u["username"] == "editor")
    ops_id = next(u["id"] for u in ops.get("/v1/users").json()["items"] if u["username"] == "ops")
    assert_error(editor.delete(f"/v1/users/{ops_id}/totp"), 403, "role_required")
    assert_error(ops.delete(f"/v1/users/{ops_id}/totp"), 403, "own_user")
    assert_error(ops.delete("/v1/users/nope/totp"), 404, "user_not_found")
    reset = ops.delete(f"/v1/users/{editor_id}/totp")
    assert reset.status_code == 200 and not reset.json()["enrolled"]
    assert sign_in(acc, "editor", DEMO_PASSWORD).status_code == 200
    audit = ops.get(f"/v1/users/{editor_id}/audit").json()["items"]
    assert [e["action"] for e in audit if e["action"].startswith("totp")] == [
        "totp_enrolment_started", "totp_enrolled", "totp_reset"]

    # gRPC: the regulator enrols through the ticket in the trailer, then signs in with a code
    async def over_grpc():
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = pb_grpc.AccountServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IssueToken(pb.IssueTokenRequest(username="regulator", password=DEMO_PASSWORD))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            meta = trailers(err.value)
            assert meta["error-code"] == "totp_enrolment_required"
            ticket = meta["enrolment-ticket"]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.EnrolTotp(pb.EnrolTotpRequest(enrolment_ticket="forged"))
            assert trailers(err.value)["error-code"] == "invalid_enrolment_ticket"
            enrol = await stub.EnrolTotp(pb.EnrolTotpRequest(enrolment_ticket=ticket))
            assert enrol.secret and enrol.otpauth_uri.startswith("otpauth://") and enrol.digits == 6
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.ConfirmTotp(pb.ConfirmTotpRequest(enrolment_ticket=ticket, code="12"))
            assert trailers(err.value)["error-code"] == "validation_failed"
            done = await stub.ConfirmTotp(pb.ConfirmTotpRequest(enrolment_ticket=ticket,
                                                                code=code_after(enrol.secret)))
            assert done.enrolled and done.confirmed_at
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IssueToken(pb.IssueTokenRequest(username="regulator", password=DEMO_PASSWORD))
            assert trailers(err.value)["error-code"] == "totp_required"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IssueToken(pb.IssueTokenRequest(username="regulator", password=DEMO_PASSWORD, otp="1" * 17))
            assert trailers(err.value)["error-code"] == "validation_failed"
            code = code_after(enrol.secret, 1)
            issued = await stub.IssueToken(pb.IssueTokenRequest(username="regulator", password=DEMO_PASSWORD,
                                                                otp=code))
            assert issued.access_token
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.IssueToken(pb.IssueTokenRequest(username="regulator", password=DEMO_PASSWORD, otp=code))
            assert trailers(err.value)["error-code"] == "invalid_totp"
            md = (("authorization", f"Bearer {issued.access_token}"),)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DisableTotp(pb.DisableTotpRequest(code="000000"), metadata=md)
            assert trailers(err.value)["error-code"] == "totp_required_for_role"
            reset = await stub.ResetUserTotp(pb.GetUserRequest(id=editor_id), metadata=(
                ("authorization", f"Bearer {ok.json()['access_token']}"),))
            assert not reset.enrolled
    asyncio.run(over_grpc())

    # the secret is sealed at rest: the database does not hold it in clear
    stored = asyncio.run(service_db(stack, "account", "SELECT secret_sealed FROM user_totp"))
    assert stored and all(s is None or secret not in s for (s,) in stored)


def test_totp_is_required_for_ops_and_regulator_in_production():
    from govmedia_kit.runtime import Runtime
    from services.account import signin
    from services.account.service import build_spec, load_settings

    def required(**settings) -> frozenset:
        return signin.totp_required_roles(Runtime(build_spec(), load_settings(**settings)))

    assert required(env="development") == frozenset()
    assert required(env="production") == {"ops", "regulator"}
    assert required(env="production", totp_required_roles="principal") == {"ops", "regulator", "principal"}
    assert required(env="development", totp_required_roles="ops") == {"ops"}


def test_a_refresh_token_gives_no_way_round_a_second_factor_a_role_now_requires(stack_factory, db_backend):
    """A session opened before the role required TOTP (given since, or the factor reset) ends at
    its next refresh; the password sign-in then leads to enrolment."""
    stack = stack_factory(db_backend, only=("account",), env={**TRUST_LOCAL, "ACCOUNT_TOTP_REQUIRED_ROLES": "regulator"})
    acc = client(stack, "account")
    session = sign_in(acc, "editor", DEMO_PASSWORD).json()
    refreshed = acc.post("/v1/auth/token", data={"grant_type": "refresh_token", "refresh_token": session["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text  # an editor needs no second factor
    ops = client(stack, "account", sign_in(acc, "ops", DEMO_PASSWORD).json()["access_token"])
    editor_id = [u for u in ops.get("/v1/users", params={"limit": 200}).json()["items"] if u["username"] == "editor"][0]["id"]
    assert ops.put(f"/v1/users/{editor_id}/roles", json={"roles": ["regulator"]}).status_code == 200
    again = acc.post("/v1/auth/token", data={"grant_type": "refresh_token",
                                             "refresh_token": refreshed.json()["refresh_token"]})
    assert again.status_code in (400, 401) and again.json()["error"]["code"] == "invalid_grant", again.text
    assert_error(sign_in(acc, "editor", DEMO_PASSWORD), 403, "totp_enrolment_required")

"""Matrix clients' NATS credentials (services/account/nats_clients.py), against a real
nats-server in operator mode: the server itself enforces each client's subjects, and a revoked
client is disconnected and refused, also after the account service restarts."""
from __future__ import annotations

import asyncio
import shutil
import time

import grpc
import httpx
import nats
import pytest

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from govmedia_cli.stack import NatsServer
from govmedia_kit import nats_jwt
from govmedia_kit.nats_estate import client_subjects
from tests.helpers import assert_error, client, client_token, login, service_db

RESPONSIBLE = {"principal": "张三", "deputy": "李四", "chief_editor": "王五"}
ENV = {"ACCOUNT_NATS_PUSH_CHECK_S": "0.5", "ACCOUNT_NATS_CLIENT_KEYS_MAX": "3"}


@pytest.fixture
def secure_stack(stack_factory):
    """The account service against its own nats-server in operator mode."""
    return lambda backend="sqlite": stack_factory(backend, only=("account",), env=ENV, secure_nats=True)


def register(ops: httpx.Client, platform: str, handle: str, mode: str = "nats") -> dict:
    unit = ops.get("/v1/units").json()["items"][0]
    made = ops.post("/v1/accounts", json={
        "unit_id": unit["id"], "platform": platform, "name": "示范省政府发布", "handle": handle,
        "opened_on": "2026-03-02", "responsible": RESPONSIBLE, "delivery": {"mode": mode}})
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["client_id"] == body["id"] and body["client_secret"] and body["delivery"]["mode"] == mode
    return body


def credentials(stack, token: str, body: dict | None = None) -> httpx.Response:
    return client(stack, "account", token).post("/v1/clients/nats-credentials", json=body or {})


def issued(stack, account: dict, tmp_path, body: dict | None = None) -> tuple[dict, str]:
    """NATS credentials of the account's client, and the path of its .creds file. A token got
    in the very second its secret changed is refused (tokens.not_before_now): then a new one."""
    deadline = time.monotonic() + 10
    while True:
        got = credentials(stack, client_token(stack, account), body)
        if got.status_code != 401 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert got.status_code == 201, got.text
    assert got.headers["cache-control"] == "no-store"
    answer = got.json()
    path = tmp_path / f"{answer['public_key']}.creds"
    path.write_text(answer["creds"])
    return answer, str(path)


class Client:
    """A nats-py connection that records what the server told it."""

    def __init__(self):
        self.errors: list[str] = []
        self.closed = asyncio.Event()
        self.nc: nats.NATS | None = None

    async def connect(self, url: str, creds: str, reconnect: bool = True) -> "Client":
        async def error(exc):
            self.errors.append(str(exc))

        async def closed():
            self.closed.set()

        self.nc = await nats.connect(url, user_credentials=creds, error_cb=error, closed_cb=closed,
                                     allow_reconnect=reconnect, max_reconnect_attempts=3, reconnect_time_wait=0.2,
                                     connect_timeout=3)
        return self

    def told(self, words: str) -> bool:
        return any(words in e.lower() for e in self.errors)

    async def close(self):
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


def into(got: list):
    async def received(msg):
        got.append(msg)
    return received


async def until(check, timeout: float = 20.0, interval: float = 0.1):
    """Poll (sync or async) `check` until truthy or the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(interval)


async def refusal(url: str, creds: str) -> str:
    """Why the server refuses a new connection with these credentials ("" when it accepts)."""
    try:
        nc = await nats.connect(url, user_credentials=creds, allow_reconnect=False, connect_timeout=3,
                                error_cb=_ignore)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    await nc.close()
    return ""


async def _ignore(exc):
    pass


async def until_refused(url: str, creds: str, timeout: float = 20.0) -> str:
    return await until(lambda: refusal(url, creds), timeout)


async def test_a_client_gets_credentials_the_server_enforces(secure_stack, db_backend, tmp_path):
    stack = secure_stack(db_backend)
    ops = client(stack, "account", login(stack, "ops"))
    a, b = register(ops, "app", "nats-a"), register(ops, "web", "nats-b")
    stream = register(ops, "douyin", "stream-c", mode="stream")
    creds_a, path_a = issued(stack, a, tmp_path)
    subjects = client_subjects(a["id"])
    assert creds_a["account_id"] == a["id"] and creds_a["subjects"] == subjects
    assert creds_a["servers"] == [stack.nats_url] and creds_a["websocket"] == stack.nats.websocket_url
    claims = nats_jwt.decode(creds_a["jwt"])
    assert claims["sub"] == creds_a["public_key"]
    assert claims["nats"]["issuer_account"] == stack.nats.estate.public("CLIENTS")
    assert claims["nats"]["sub"]["allow"] == [subjects["events"]]
    assert claims["exp"] > claims["iat"] and creds_a["expires_at"]
    # only the public key is kept
    rows = await service_db(stack, "account", "SELECT public_key, account_id FROM nats_client_keys")
    assert rows == [(creds_a["public_key"], a["id"])]
    seed = nats_jwt.parse_creds(creds_a["creds"])[1].decode()
    assert not any(str(value).startswith("SU") or seed in str(value) for row in rows for value in row)

    # the server lets the client have its own subjects, and nothing of another client's
    dispatch = await nats.connect(stack.nats_url, user_credentials=str(stack.nats.estate.creds("dispatch-clients")))
    acks = []
    await dispatch.subscribe("govmedia.client.*.ack", cb=into(acks))
    await dispatch.flush()
    me = await Client().connect(stack.nats_url, path_a)
    mine, theirs = [], []
    await me.nc.subscribe(subjects["events"], cb=into(mine))
    await me.nc.subscribe(client_subjects(b["id"])["events"], cb=into(theirs))
    await me.nc.flush()
    await until(lambda: me.told("permissions violation for subscription"))
    await dispatch.publish(client_subjects(b["id"])["events"], b'{"id": "for-b"}')
    await dispatch.publish(subjects["events"], b'{"id": "for-a"}')
    await until(lambda: mine)  # published after the other: anything for b would have come first
    assert [m.data for m in mine] == [b'{"id": "for-a"}'] and theirs == []
    # acknowledging for another client: refused by the server, nothing reaches dispatch
    await me.nc.publish(client_subjects(b["id"])["ack"], b'{"ids": ["x"]}')
    await me.nc.publish(subjects["ack"], b'{"ids": ["y"]}')
    await until(lambda: acks)
    await until(lambda: me.told("permissions violation for publish"))
    assert [m.subject for m in acks] == [subjects["ack"]]
    await me.close()

    # bring your own key: the seed never leaves the client, the answer has no creds
    own = nats_jwt.Key.new("user")
    mine_too = credentials(stack, client_token(stack, a), {"public_key": own.public})
    assert mine_too.status_code == 201, mine_too.text
    assert "creds" not in mine_too.json() and mine_too.json()["public_key"] == own.public
    own_path = tmp_path / "own.creds"
    own_path.write_text(nats_jwt.creds(mine_too.json()["jwt"], own.seed))
    assert await refusal(stack.nats_url, str(own_path)) == ""
    # the same key asked again: a new JWT; another account, or a seed, or garbage: refused
    assert credentials(stack, client_token(stack, a), {"public_key": own.public}).status_code == 201
    assert_error(credentials(stack, client_token(stack, b), {"public_key": own.public}), 409, "public_key_used")
    token_a = client_token(stack, a)
    for bad in ("U" + "A" * 55, own.seed.decode(), "AAAA", own.public.lower(), own.public[:-1] + "A"):
        if bad != own.public:
            assert_error(credentials(stack, token_a, {"public_key": bad}), 422, "invalid_public_key")
    assert_error(credentials(stack, token_a, {"public_key": own.public, "extra": 1}), 422, "validation_failed")
    # a person's token, or a stream account's client: refused
    assert_error(credentials(stack, login(stack, "ops")), 403, "client_required")
    assert_error(credentials(stack, client_token(stack, stream)), 409, "not_nats_delivery")
    assert_error(client(stack, "account").post("/v1/clients/nats-credentials", json={}), 401, "unauthenticated")

    # gRPC: the same use case
    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        got = await stub.IssueNatsCredentials(pb.IssueNatsCredentialsRequest(),
                                              metadata=[("authorization", f"Bearer {client_token(stack, b)}")])
        assert got.account_id == b["id"] and got.creds and got.subjects.events == client_subjects(b["id"])["events"]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.IssueNatsCredentials(pb.IssueNatsCredentialsRequest(),
                                            metadata=[("authorization", f"Bearer {login(stack, 'ops')}")])
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "client_required" in refused.value.details()
    await dispatch.close()


async def test_revoked_clients_are_disconnected_and_stay_refused(secure_stack, db_backend, tmp_path):
    stack = secure_stack(db_backend)
    ops = client(stack, "account", login(stack, "ops"))
    a, b = register(ops, "app", "rev-a"), register(ops, "web", "rev-b")
    _, path_a = issued(stack, a, tmp_path)
    _, path_b = issued(stack, b, tmp_path)
    resolver_dir = stack.data_dir / "nats" / "accounts"
    before = tmp_path / "resolver-before"
    shutil.copytree(resolver_dir, before)  # what a server restarted from an old directory holds
    first, second = await Client().connect(stack.nats_url, path_a), await Client().connect(stack.nats_url, path_b)
    old_token = client_token(stack, a)

    # two revocations at once (the same second): both clients are disconnected, neither comes back
    rotated = ops.post(f"/v1/accounts/{a['id']}/client-secret")
    assert rotated.status_code == 200, rotated.text
    assert ops.delete(f"/v1/accounts/{b['id']}/client-secret").status_code == 204
    await until(first.closed.is_set)
    await until(second.closed.is_set)
    assert await until_refused(stack.nats_url, path_a) and await until_refused(stack.nats_url, path_b)
    # a token got with the old secret gets nothing; the new secret gets credentials that work
    assert credentials(stack, old_token).status_code == 401
    a = {**a, "client_secret": rotated.json()["client_secret"]}
    _, new_a = issued(stack, a, tmp_path)
    assert await refusal(stack.nats_url, new_a) == ""

    # at most ACCOUNT_NATS_CLIENT_KEYS_MAX (3) live keys: a fourth revokes the oldest
    more = [issued(stack, a, tmp_path)[1] for _ in range(3)]
    assert await until_refused(stack.nats_url, new_a)
    for path in more:
        assert await refusal(stack.nats_url, path) == ""

    # an account service restart keeps every revocation in force, and pushes them again at start
    stack.restart("account")
    for path in (path_a, path_b, new_a):
        assert await refusal(stack.nats_url, path)
    assert await refusal(stack.nats_url, more[-1]) == ""

    # a NATS server restarted from an old resolver directory is corrected within seconds
    port = int(stack.nats_url.rsplit(":", 1)[1])
    stack.nats.stop()
    shutil.rmtree(resolver_dir)
    shutil.copytree(before, resolver_dir)
    stack.nats = NatsServer.start(stack.data_dir / "nats", port, stack.data_dir / "logs" / "nats-2.log",
                                  estate=stack.nats.estate)
    assert await until_refused(stack.nats_url, path_a, timeout=30)
    assert await refusal(stack.nats_url, path_b) and await refusal(stack.nats_url, new_a)
    assert await refusal(stack.nats_url, more[-1]) == ""

    # a revocation made while NATS is down reaches the servers when they are back
    estate = stack.nats.estate
    stack.nats.stop()
    assert ops.delete(f"/v1/accounts/{a['id']}/client-secret").status_code == 204
    stack.nats = NatsServer.start(stack.data_dir / "nats", port, stack.data_dir / "logs" / "nats-3.log", estate=estate)
    for path in more:
        assert await until_refused(stack.nats_url, path, timeout=30)


async def test_leaving_nats_and_closing_revoke_the_credentials(secure_stack, tmp_path):
    stack = secure_stack("sqlite")
    ops = client(stack, "account", login(stack, "ops"))
    editor = client(stack, "account", login(stack, "editor"))
    principal = client(stack, "account", login(stack, "reviewer3"))
    a, b = register(ops, "app", "leave-a"), register(ops, "web", "close-b")
    _, path_a = issued(stack, a, tmp_path)
    _, path_b = issued(stack, b, tmp_path)
    first, second = await Client().connect(stack.nats_url, path_a), await Client().connect(stack.nats_url, path_b)

    # delivery changed to stream: the NATS user goes, the client secret stays
    changed = ops.post(f"/v1/accounts/{a['id']}/changes", json={"delivery": {"mode": "stream"}, "note": "改为流式"})
    assert changed.status_code == 200, changed.text
    assert "client_secret" not in changed.json()
    await until(first.closed.is_set)
    assert await until_refused(stack.nats_url, path_a)
    assert_error(credentials(stack, client_token(stack, a)), 409, "not_nats_delivery")
    assert not second.closed.is_set() and second.nc.is_connected  # another client is not touched

    # closing: requested, approved (the announcement still reaches it), deregistered: disconnected
    assert editor.post(f"/v1/accounts/{b['id']}/closing", json={"reason": "职能调整"}).status_code == 200
    assert principal.post(f"/v1/accounts/{b['id']}/approve-closing", json={}).status_code == 200
    assert second.nc.is_connected
    gone = editor.post(f"/v1/accounts/{b['id']}/deregister", json={"deregistered_on": "2026-11-02"})
    assert gone.status_code == 200, gone.text
    await until(second.closed.is_set)
    assert await until_refused(stack.nats_url, path_b)
    rows = await _reasons(stack)
    assert rows == {a["id"]: "delivery_changed", b["id"]: "deregistered"}


async def _reasons(stack) -> dict:
    return dict(await service_db(stack, "account", "SELECT account_id, reason FROM nats_client_keys"))


def test_without_secure_nats_issuing_is_not_configured(stack_factory, tmp_path):
    stack = stack_factory("sqlite", only=("account",))
    ops = client(stack, "account", login(stack, "ops"))
    a = register(ops, "app", "plain")
    assert_error(credentials(stack, client_token(stack, a)), 503, "nats_not_configured")
    # rotating works as for stream accounts, with nothing to push
    assert ops.post(f"/v1/accounts/{a['id']}/client-secret").status_code == 200


def test_the_revocation_list_covers_every_jwt_of_a_revoked_key_until_it_ends():
    """Pure rules of nats_clients: a revoked key is listed past its revocation by the clock
    margin, left out once its last JWT has ended; a push never goes below the last one's iat."""
    from datetime import datetime, timedelta, timezone

    from services.account import nats_clients
    from services.account.models import NatsClientKey

    now = datetime(2026, 12, 6, 8, 0, tzinfo=timezone.utc)
    day = 86400
    fresh = NatsClientKey(public_key="U1", account_id="a", issued_at=now - timedelta(days=1),
                          revoked_at=now - timedelta(hours=1))
    ended = NatsClientKey(public_key="U2", account_id="a", issued_at=now - timedelta(days=91), revoked_at=now)
    listed = nats_clients.revocation_list([fresh, ended], 90 * day, now)
    assert listed == {"U1": int((now - timedelta(hours=1)).timestamp()) + nats_clients.CLOCK_MARGIN_S}
    assert set(nats_clients.revocation_list([fresh, ended], 0, now)) == {"U1", "U2"}  # no end: kept

    operator, clients, signing = nats_jwt.Key.new("operator"), nats_jwt.Key.new("account"), nats_jwt.Key.new("account")
    cfg = nats_clients.NatsClients(account=clients.public, signing=signing, operator_signing=operator,
                                   system_creds="", servers=(), websocket=None, bus_servers=(), max_keys=10, ttl_s=0)
    ahead = int(time.time()) + 60  # the replica that pushed last has a clock a minute ahead
    claims = nats_jwt.decode(nats_clients._account_jwt(cfg, listed, ahead))
    assert claims["iat"] == ahead and claims["nats"]["revocations"] == listed and claims["iss"] == operator.public
    assert nats_jwt.decode(nats_clients._account_jwt(cfg, {}, 0))["iat"] >= int(time.time()) - 1

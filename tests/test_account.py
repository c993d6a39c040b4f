"""The account service as a real process: sign-in, organisation, the ledger, bad input."""
from __future__ import annotations

import asyncio

import grpc
import httpx
import pytest

from govmedia.account.v1 import account_pb2 as pb
from govmedia.account.v1 import account_pb2_grpc as pb_grpc
from tests.helpers import assert_error, auth, client, login, service_db


@pytest.fixture
def stack(stack_factory, db_backend):
    return stack_factory(db_backend, only=("account",))


def test_sign_in_and_jwks(stack):
    acc = client(stack, "account")
    assert_error(acc.post("/v1/auth/token", data={"username": "ops", "password": "wrong-password"}), 401, "invalid_grant")
    assert_error(acc.post("/v1/auth/token", data={"username": "nobody", "password": "x"}), 401, "invalid_grant")
    # NUL, which PostgreSQL cannot compare: a clear refusal at the door, not an internal error
    for form in ({"username": "ops\x00", "password": "x"}, {"username": "ops", "password": "demo\x00"},
                 {"grant_type": "client_credentials", "client_id": "a\x00", "client_secret": "x"}):
        assert_error(acc.post("/v1/auth/token", data=form), 400, "invalid_character")
    assert_error(acc.get("/v1/accounts/a%00b"), 400, "invalid_character")
    token = login(stack, "ops")
    # Passwords are stored as Argon2id hashes (memory-hard), never as themselves.
    [(stored,)] = asyncio.run(service_db(stack, "account", "SELECT password_hash FROM users WHERE username = 'ops'"))
    assert stored.startswith("$argon2id$") and "demo-pass-2026" not in stored
    keys = acc.get("/.well-known/jwks.json").json()["keys"]
    assert keys and keys[0]["kty"] == "RSA" and "d" not in keys[0]  # public half only
    me = acc.get("/v1/users", headers=auth(token)).json()
    assert {u["username"] for u in me["items"]} >= {"ops", "editor", "reviewer1", "reviewer2", "reviewer3"}
    assert all("password" not in str(u) for u in me["items"])


def test_organisation_and_ledger(stack):
    ops = client(stack, "account", login(stack, "ops"))
    editor = client(stack, "account", login(stack, "editor"))
    province = ops.get("/v1/regions").json()["items"][0]
    city = ops.post("/v1/regions", json={"name": "示范市", "parent_id": province["id"], "level": "city"})
    assert city.status_code == 201, city.text
    unit = ops.post("/v1/units", json={"name": "示范市政府办", "region_id": city.json()["id"], "kind": "government"})
    assert unit.status_code == 201, unit.text
    account = {
        "unit_id": unit.json()["id"], "platform": "weibo", "name": "示范市发布", "handle": "sfs-fabu",
        "opened_on": "2026-01-05", "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"},
        "delivery": {"mode": "webhook", "url": "https://example.org/hook", "secret": "s" * 32},
    }
    # the wrong role changes nothing
    assert_error(editor.post("/v1/accounts", json=account), 403, "role_required")
    created = ops.post("/v1/accounts", json=account)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["status"] == "active" and "secret" not in str(body)
    assert_error(ops.post("/v1/accounts", json=account), 409, "account_exists_for_platform")
    # bad input
    assert_error(ops.post("/v1/accounts", json={**account, "platform": "myspace"}), 422, "validation_failed")
    assert_error(ops.post("/v1/accounts", json={**account, "handle": "x2", "unit_id": "nope"}), 422, "unit_not_found")
    assert_error(ops.post("/v1/accounts", json={k: v for k, v in account.items() if k != "responsible"}), 422,
                 "validation_failed")
    # a stream account gets client credentials once, and they work
    stream = ops.post("/v1/accounts", json={**account, "handle": "sfs-app", "platform": "app",
                                            "delivery": {"mode": "stream"}}).json()
    assert stream["client_secret"]
    tok = httpx.post(f"{stack.services['account'].base_url}/v1/auth/token",
                     data={"grant_type": "client_credentials", "client_id": stream["id"],
                           "client_secret": stream["client_secret"]})
    assert tok.status_code == 200, tok.text
    # the client token reads its own account, and nothing else of its unit
    as_client = client(stack, "account", tok.json()["access_token"])
    assert as_client.get(f"/v1/accounts/{stream['id']}").status_code == 200
    assert_error(as_client.get(f"/v1/accounts/{body['id']}"), 403, "other_account")
    assert_error(as_client.get("/v1/accounts"), 403, "client_not_allowed")
    assert_error(as_client.get("/v1/users"), 403, "client_not_allowed")
    again = ops.get(f"/v1/accounts/{stream['id']}").json()
    assert "client_secret" not in again
    listed = ops.get("/v1/accounts", params={"platform": "weibo"}).json()["items"]
    assert [a["handle"] for a in listed] == ["sfs-fabu"]
    # the other unit's editor cannot read it
    assert_error(editor.get(f"/v1/accounts/{body['id']}"), 403, "other_unit")
    csv = ops.get("/v1/ledger")
    assert csv.status_code == 200 and "sfs-fabu" in csv.text and "s" * 32 not in csv.text
    assert_error(client(stack, "account").get("/v1/accounts"), 401, "unauthenticated")


def test_idempotency_key_replays_a_write(stack):
    ops = client(stack, "account", login(stack, "ops"))
    province = ops.get("/v1/regions").json()["items"][0]
    body = {"name": "一次市", "parent_id": province["id"], "level": "city"}
    first = ops.post("/v1/regions", json=body, headers={"Idempotency-Key": "k1"})
    second = ops.post("/v1/regions", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers.get("idempotent-replayed") == "true"
    assert_error(ops.post("/v1/regions", json={**body, "name": "别的"}, headers={"Idempotency-Key": "k1"}), 422,
                 "idempotency_key_reused")
    names = [r["name"] for r in ops.get("/v1/regions").json()["items"]]
    assert names.count("一次市") == 1 and "别的" not in names
    # a refused write changed nothing, so its key is free for the corrected request
    assert_error(ops.post("/v1/regions", json={**body, "level": "galaxy"}, headers={"Idempotency-Key": "k2"}), 422,
                 "validation_failed")
    fixed = ops.post("/v1/regions", json={**body, "name": "改正市"}, headers={"Idempotency-Key": "k2"})
    assert fixed.status_code == 201 and "idempotent-replayed" not in fixed.headers
    # the key belongs to the person, not to one token: a new sign-in replays it; nobody else can
    again = client(stack, "account", login(stack, "ops")).post("/v1/regions", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client(stack, "account", login(stack, "regulator")).post("/v1/regions", json=body,
                                                                      headers={"Idempotency-Key": "k1"})
    assert other.status_code == 201 and "idempotent-replayed" not in other.headers


async def test_grpc_token_and_accounts(stack):
    async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
        stub = pb_grpc.AccountServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.IssueToken(pb.IssueTokenRequest(username="ops", password="bad"))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        token = (await stub.IssueToken(pb.IssueTokenRequest(username="ops", password="demo-pass-2026"))).access_token
        md = (("authorization", f"Bearer {token}"),)
        units = await stub.ListUnits(pb.ListRequest(), metadata=md)
        assert units.items[0].name == "省政府办公厅"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListUnits(pb.ListRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAccount(pb.RegisterAccountRequest(unit_id=units.items[0].id, platform="weibo"), metadata=md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        acc = await stub.RegisterAccount(pb.RegisterAccountRequest(
            unit_id=units.items[0].id, platform="wechat", name="示范省发布", handle="sfs-wx", opened_on="2025-03-01",
            responsible=pb.Responsible(principal="甲", deputy="乙", chief_editor="丙"),
            delivery=pb.Delivery(mode="stream")), metadata=md)
        assert acc.status == "active" and acc.client_secret
        got = await stub.GetAccount(pb.GetAccountRequest(id=acc.id), metadata=md)
        assert got.client_secret == "" and got.handle == "sfs-wx"


def test_organisation_refuses_bad_input_and_wrong_roles(stack):
    ops = client(stack, "account", login(stack, "ops"))
    editor = client(stack, "account", login(stack, "editor"))
    regulator = client(stack, "account", login(stack, "regulator"))
    province = ops.get("/v1/regions").json()["items"][0]
    unit = ops.get("/v1/units").json()["items"][0]
    before = {path: len(ops.get(path, params={"limit": 200}).json()["items"]) for path in ("/v1/regions", "/v1/units", "/v1/users")}
    # wrong role
    assert_error(editor.post("/v1/regions", json={"name": "某市", "parent_id": province["id"], "level": "city"}), 403,
                 "role_required")
    assert_error(editor.post("/v1/units", json={"name": "某局", "region_id": province["id"]}), 403, "role_required")
    assert_error(regulator.post("/v1/users", json={"username": "newbie", "password": "long-enough-pw", "unit_id": unit["id"],
                                                   "roles": ["editor"]}), 403, "role_required")
    # missing fields, wrong types, unknown values, dangling references
    assert_error(ops.post("/v1/regions", json={"parent_id": province["id"], "level": "city"}), 422, "validation_failed")
    assert_error(ops.post("/v1/regions", json={"name": "某市", "parent_id": province["id"], "level": "galaxy"}), 422,
                 "validation_failed")
    assert_error(ops.post("/v1/regions", json={"name": "某市", "level": "city"}), 422, "parent_required")
    assert_error(ops.post("/v1/regions", json={"name": "某市", "parent_id": "nope", "level": "city"}), 422,
                 "parent_region_not_found")
    assert_error(ops.post("/v1/units", json={"name": "某局", "region_id": 42}), 422, "validation_failed")
    assert_error(ops.post("/v1/units", json={"name": "某局", "region_id": "nope"}), 422, "region_not_found")
    assert_error(ops.post("/v1/units", json={"name": "某局", "region_id": province["id"], "parent_id": "nope"}), 422,
                 "parent_unit_not_found")
    assert_error(ops.post("/v1/units", json={"name": "某局", "region_id": province["id"], "kind": "company"}), 422,
                 "validation_failed")
    # NUL in any text, which PostgreSQL cannot store: refused alike on both databases
    assert_error(ops.post("/v1/units", json={"name": "某\x00局", "region_id": province["id"]}), 400,
                 "invalid_character")
    assert_error(ops.post("/v1/regions", json={"name": "某市\x00", "parent_id": province["id"], "level": "city"}),
                 400, "invalid_character")
    assert_error(ops.post("/v1/units", json={"name": "某局", "region_id": province["id"], "short_names": ["\x00"]}),
                 400, "invalid_character")
    assert_error(ops.post("/v1/users", json={"username": "newbie", "password": "short", "unit_id": unit["id"],
                                             "roles": ["editor"]}), 422, "validation_failed")
    assert_error(ops.post("/v1/users", json={"username": "newbie", "password": "long-enough-pw", "unit_id": unit["id"],
                                             "roles": ["emperor"]}), 422, "validation_failed")
    assert_error(ops.post("/v1/users", json={"username": "editor", "password": "long-enough-pw", "unit_id": unit["id"],
                                             "roles": ["editor"]}), 409, "username_taken")
    assert_error(ops.post("/v1/users", json={"username": "newbie", "password": "long-enough-pw", "unit_id": unit["id"],
                                             "roles": ["editor"], "is_admin": True}), 422, "validation_failed")
    after = {path: len(ops.get(path, params={"limit": 200}).json()["items"]) for path in before}
    assert after == before  # nothing was stored
    # a unit under a parent unit, of a kind
    dept = ops.post("/v1/units", json={"name": "省政府办公厅信息处", "region_id": province["id"], "parent_id": unit["id"],
                                       "kind": "department"})
    assert dept.status_code == 201, dept.text
    assert (dept.json()["parent_id"], dept.json()["kind"]) == (unit["id"], "department")
    # and a good one works, the new user can sign in
    created = ops.post("/v1/users", json={"username": "newbie", "password": "long-enough-pw", "unit_id": unit["id"],
                                          "roles": ["editor"]})
    assert created.status_code == 201 and "password" not in created.text
    assert login(stack, "newbie", "long-enough-pw")

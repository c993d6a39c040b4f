"""Who may reach whom (issue 16): webhook URLs may not lead inside (SSRF), checked when
they are registered or changed and again by dispatch at every connection.

Unit tests of the address check use plain data; the rest run the services as processes
(SQLite and PostgreSQL), over REST and gRPC."""
from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket

import grpc
import pytest

from govmedia.account.v1 import account_pb2 as apb
from govmedia.account.v1 import account_pb2_grpc as apb_grpc
from govmedia_kit.db import new_id
from govmedia_kit.egress import EgressPolicy, EgressRefused, address_kind
from services.dispatch.http import HttpClient, describe
from tests.helpers import assert_error, client, eventually, login
from tests.test_dispatch import FAST_RETRIES, approve, demo_unit, fake_accounts, register, wait_known

PROD = EgressPolicy.from_env(production=True, raw="")
DEV = EgressPolicy.from_env(production=False, raw="")


def refused(policy: EgressPolicy, host: str) -> str | None:
    try:
        policy.check_host(host)
    except EgressRefused as exc:
        return exc.kind
    return None


# --- the address check, on plain data ------------------------------------------------------

@pytest.mark.parametrize("host, kind", [
    ("169.254.169.254", "link_local"),  # the cloud's metadata service
    ("fe80::1", "link_local"),
    ("[::ffff:169.254.169.254]", "link_local"),  # IPv4-mapped
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "unspecified"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("2002:a00:1::1", "private"),  # 6to4 of 10.0.0.1
    ("100.64.0.1", "cgnat"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("127.0.0.1", "loopback"), ("::1", "loopback"),
    ("127.1", "loopback"), ("2130706433", "loopback"), ("0x7f.0.0.1", "loopback"),  # spellings of 127.0.0.1
    ("localhost", "loopback"), ("api.localhost", "loopback"),
    ("account", "single_label_name"), ("nats", "single_label_name"),
    ("dispatch.govmedia.svc", "cluster_name"), ("nats.govmedia.svc.cluster.local", "cluster_name"),
    ("metadata.google.internal", "cluster_name"),
    # IPv6 outside global unicast that Python calls "global": IPv4-compatible, SIIT, local-use NAT64
    ("[::127.0.0.1]", "reserved"), ("[::169.254.169.254]", "reserved"), ("[::ffff:0:a9fe:a9fe]", "reserved"),
    ("[64:ff9b:1::a9fe:a9fe]", "reserved"),
])
def test_internal_addresses_and_names_are_refused_in_production(host, kind):
    assert refused(PROD, host) == kind


def test_development_admits_loopback_only():
    for host in ("127.0.0.1", "::1", "127.1", "localhost"):
        assert refused(DEV, host) is None
    for host in ("169.254.169.254", "10.0.0.1", "100.64.0.1", "account", "x.svc"):
        assert refused(DEV, host) is not None
    for host in ("8.8.8.8", "2606:4700:4700::1111", "hooks.example.org", "webhook.gov.cn"):
        assert refused(PROD, host) is None and refused(DEV, host) is None
    assert address_kind(ipaddress.ip_address("1.1.1.1")) is None


def test_allow_list_admits_the_units_gateway_but_never_the_metadata_service():
    policy = EgressPolicy.from_env(production=True, raw="10.20.0.0/24, intranet-gw , gw.unit.example.gov.cn")
    assert refused(policy, "10.20.0.5") is None
    assert refused(policy, "10.20.1.5") == "private"
    assert refused(policy, "intranet-gw") is None  # a single-label name, admitted by name
    assert refused(policy, "other-gw") == "single_label_name"
    # an allow-listed name's intranet address passes; a link-local one never does
    tcp = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
    policy.check_resolved("gw.unit.example.gov.cn", [(*tcp, ("10.99.0.1", 443))])
    with pytest.raises(EgressRefused):
        policy.check_resolved("gw.unit.example.gov.cn", [(*tcp, ("169.254.169.254", 443))])
    for bad in ("169.254.0.0/16", "0.0.0.0/0", "224.0.0.0/4", "not a host/x"):
        with pytest.raises(ValueError):
            EgressPolicy.from_env(production=True, raw=bad)


def test_a_name_is_judged_by_every_address_it_resolves_to():
    """DNS rebinding: the check at connection time looks at what the name resolves to now;
    one internal address among public ones refuses it."""
    tcp = (socket.AF_INET, socket.SOCK_STREAM, 6, "")
    public = [(*tcp, ("93.184.216.34", 443))]
    assert DEV.check_resolved("hooks.example.org", public) == public
    with pytest.raises(EgressRefused) as err:
        DEV.check_resolved("hooks.example.org", public + [(*tcp, ("10.0.0.7", 443))])
    assert err.value.kind == "private" and "10.0.0.7" not in str(err.value)
    with pytest.raises(EgressRefused):
        PROD.check_resolved("hooks.example.org", [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 443, 0, 0))])


def test_a_failures_description_never_carries_an_address():
    assert describe(EgressRefused("private")) == "egress_forbidden: private"
    refused_conn = ConnectionRefusedError(111, "Connect call failed ('10.0.0.7', 8080)")
    assert "10.0.0.7" not in describe(refused_conn) and "ConnectionRefusedError" in describe(refused_conn)
    multi = OSError("Multiple exceptions: [Errno 111] Connect call failed ('10.0.0.7', 80)")
    assert "10.0.0.7" not in describe(multi)


# --- dispatch's connection step, against a real local server -------------------------------

async def _host_recorder():
    """A one-request-at-a-time HTTP server on 127.0.0.1 recording each request's Host header."""
    seen: list[str] = []

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"host":
                seen.append(value.strip().decode())
            elif name.lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_the_connection_step_checks_the_resolved_address_and_keeps_the_host():
    server, port, seen = await _host_recorder()
    async with server:
        dev = HttpClient(5, 4, "test", egress=DEV)
        prod = HttpClient(5, 4, "test", egress=PROD)
        try:
            # development: the name is resolved here and the checked address connected to,
            # with the URL's own Host
            assert await dev.post(f"http://localhost:{port}/h", [], b"{}") == 204
            assert seen == [f"localhost:{port}"]
            for url in (f"http://localhost:{port}/h", f"http://127.1:{port}/h", f"http://[::ffff:127.0.0.1]:{port}/h"):
                with pytest.raises(EgressRefused) as err:
                    await prod.post(url, [], b"{}")
                assert err.value.kind == "loopback"
            with pytest.raises(EgressRefused):
                await dev.post(f"http://10.255.255.1:{port}/h", [], b"{}")  # refused before any connection
            assert seen == [f"localhost:{port}"]  # nothing else arrived
        finally:
            await dev.close()
            await prod.close()


# --- registration and change, REST and gRPC -------------------------------------------------

FORBIDDEN_URLS = {
    "http://169.254.169.254/latest/meta-data/iam/": "link_local",
    "http://0xa9fea9fe/hook": "link_local",  # 169.254.169.254 spelt in hex
    "http://[fe80::1]/hook": "link_local",
    "http://10.0.0.8:8080/hook": "private",
    "https://192.168.1.20/hook": "private",
    "http://[fd12::1]/hook": "private",
    "http://100.64.3.4/hook": "cgnat",
    "http://224.0.0.251/hook": "multicast",
    "http://0.0.0.0:8001/hook": "unspecified",
    "http://account:8001/v1/users": "single_label_name",
    "http://nats.govmedia.svc.cluster.local:8222/": "cluster_name",
    "http://dispatch.govmedia.svc/": "cluster_name",
}


def test_webhook_urls_that_lead_inside_are_refused_on_registration_and_change(stack_factory, db_backend, receiver):
    stack = stack_factory(db_backend, only=("account",), env={"GOVMEDIA_WEBHOOK_ALLOW": "10.20.0.0/24"})
    # development says at start-up that loopback is allowed, and what the allow-list admits
    said = stack.services["account"].log_path.read_text(errors="replace")
    assert "loopback ALLOWED (development" in said and "allow-list: 10.20.0.0/24" in said
    ops = client(stack, "account", login(stack, "ops"))
    unit = demo_unit(ops)
    secret = secrets.token_hex(16)

    def body(handle: str, url: str) -> dict:
        return {"unit_id": unit["id"], "platform": "weibo", "name": f"{unit['name']}{handle}", "handle": handle,
                "opened_on": "2025-01-01", "responsible": {"principal": "甲", "deputy": "乙", "chief_editor": "丙"},
                "delivery": {"mode": "webhook", "url": url, "secret": secret}}

    register(ops, unit["id"], "egress-first", {"mode": "stream"})  # the unit's platform exception
    before = len(ops.get("/v1/accounts", params={"limit": 200}).json()["items"])
    for i, (url, kind) in enumerate(FORBIDDEN_URLS.items()):
        refusal = assert_error(ops.post("/v1/accounts", json=body(f"ssrf-{i}", url)), 422, "webhook_url_forbidden")
        assert refusal["error"]["details"]["reason"] == kind, (url, refusal)
    assert len(ops.get("/v1/accounts", params={"limit": 200}).json()["items"]) == before  # nothing stored

    # development: a receiver on this machine is fine; the allow-list admits the unit's gateway
    ok = register(ops, unit["id"], "egress-local", {"mode": "webhook", "url": receiver.url("x"), "secret": secret})
    gateway = register(ops, unit["id"], "egress-gw", {"mode": "webhook", "url": "http://10.20.0.9/hook",
                                                      "secret": secret})
    assert gateway["delivery"]["url"] == "http://10.20.0.9/hook"

    # a change to an internal URL is refused and changes nothing (no history step, no filing)
    steps = len(ops.get(f"/v1/accounts/{ok['id']}/history").json()["items"])
    refusal = assert_error(ops.post(f"/v1/accounts/{ok['id']}/changes", json={
        "delivery": {"mode": "webhook", "url": "http://169.254.169.254/", "secret": secret}, "note": "n"}),
        422, "webhook_url_forbidden")
    assert refusal["error"]["details"] == {"field": "delivery.url", "reason": "link_local"}
    assert "169.254" not in refusal["error"]["message"]
    assert ops.get(f"/v1/accounts/{ok['id']}").json()["delivery"]["url"] == receiver.url("x")
    assert len(ops.get(f"/v1/accounts/{ok['id']}/history").json()["items"]) == steps

    # the same over gRPC
    async def over_grpc():
        md = (("authorization", f"Bearer {login(stack, 'ops')}"),)
        async with grpc.aio.insecure_channel(stack.services["account"].grpc_target) as channel:
            stub = apb_grpc.AccountServiceStub(channel)
            for url, kind in (("http://169.254.169.254/", "link_local"), ("http://redis:6379/", "single_label_name")):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.RegisterAccount(apb.RegisterAccountRequest(
                        unit_id=unit["id"], platform="weibo", name=f"{unit['name']}grpc", handle="egress-grpc",
                        opened_on="2025-01-01", responsible=apb.Responsible(principal="甲", deputy="乙", chief_editor="丙"),
                        delivery=apb.Delivery(mode="webhook", url=url, secret=secret)), metadata=md)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert dict(err.value.trailing_metadata())["error-code"] == "webhook_url_forbidden"
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.ChangeAccount(apb.ChangeAccountRequest(
                        id=ok["id"], note="n", delivery=apb.Delivery(mode="webhook", url=url, secret=secret)),
                        metadata=md)
                assert dict(err.value.trailing_metadata())["error-code"] == "webhook_url_forbidden"
    asyncio.run(over_grpc())
    assert ops.get(f"/v1/accounts/{ok['id']}").json()["delivery"]["url"] == receiver.url("x")
    assert len(ops.get("/v1/accounts", params={"limit": 200}).json()["items"]) == before + 2


def test_dispatch_in_production_refuses_internal_addresses_at_connect_time(stack_factory, db_backend, receiver):
    """URLs that reach dispatch without the registration check (stored before it, or a name
    whose DNS changed since): dispatch refuses them when it connects, and the stored error
    names the kind of address, never the address."""
    stack = stack_factory(db_backend, only=("account",), env=FAST_RETRIES)
    dispatch = stack.services["dispatch"]
    dispatch.env["GOVMEDIA_ENV"] = "production"
    dispatch.start()
    dispatch.wait_ready(90)
    assert "loopback refused" in dispatch.log_path.read_text(errors="replace")
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    port = receiver.port
    ids = fake_accounts(stack, receiver, unit["id"], unit["region_id"], {
        "spelt": {"url": f"http://127.1:{port}/h/spelt/ok"},
        "named": {"url": f"http://localhost:{port}/h/named/ok"},
        "mapped": {"url": f"http://[::ffff:127.0.0.1]:{port}/h/mapped/ok"},
        "private": {"url": "http://10.255.255.1:9/h/private/ok"},
    })
    wait_known(disp, ids.values())
    item = new_id()
    approve(stack, item, unit["id"], accounts=list(ids.values()))

    def refused_everywhere():
        rows = disp.get("/v1/deliveries", params={"item_id": item, "limit": 50}).json()["items"]
        errors = {r["account_id"]: r["last_error"] for r in rows}
        return errors if len(errors) == 4 and all(errors.values()) else None

    errors = eventually(refused_everywhere, timeout=30)
    assert errors[ids["private"]] == "egress_forbidden: private"
    assert {errors[ids[n]] for n in ("spelt", "named", "mapped")} == {"egress_forbidden: loopback"}
    for row in disp.get("/v1/deliveries", params={"item_id": item, "limit": 50}).json()["items"]:
        history = disp.get(f"/v1/deliveries/{row['id']}").json()["history"]
        assert not any("127.0.0.1" in (h["error"] or "") or "10.255" in (h["error"] or "") for h in history)
    assert not any(receiver.got(n) for n in ("spelt", "named", "mapped"))

"""Who may reach whom (issue 16): the clients' feed streams. A limit of streams per client,
a bounded mailbox per stream (a slow client is cut, and resumes from its cursor), streams
ended when the account closes or the client's secret is revoked, and a `Last-Event-ID` that
is not ASCII digits refused with a stable code. gRPC (Connect, Subscribe) and SSE, on SQLite
and PostgreSQL."""
from __future__ import annotations

import json
import queue
import threading

import grpc
import httpx
import pytest

from govmedia.dispatch.v1 import dispatch_pb2 as pb
from govmedia.dispatch.v1 import dispatch_pb2_grpc as pb_grpc
from govmedia_cli.stack import TLS
from govmedia_kit.db import new_id
from tests.helpers import assert_error, auth, client, client_token, eventually, login
from tests.test_dispatch import demo_unit, register, wait_known
from tests.test_dispatch_streams import ENV, SERVICES, Conn, approve_item


def md(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


def error_code(err: grpc.RpcError) -> str | None:
    return dict(err.trailing_metadata() or ()).get("error-code")


def opened(conn: Conn) -> Conn:
    """The Connect stream is registered (its headers say so before any event)."""
    assert dict(conn.call.initial_metadata()).get("govmedia-stream") == "open"
    return conn


def refusal(conn: Conn, timeout: float = 60) -> grpc.RpcError:
    """The status that ends the stream (events before it are skipped)."""
    while True:
        got = conn.events.get(timeout=timeout)
        if isinstance(got, grpc.RpcError):
            return got


def feed_url(stack) -> str:
    return f"{stack.services['dispatch'].base_url}/v1/feed"


class Sse:
    """An SSE feed read by a thread: events and the final `error` event go to a queue."""

    def __init__(self, stack, token: str, cursor: int = 0):
        self.lines: queue.Queue = queue.Queue()
        self.status: queue.Queue = queue.Queue()
        self._stop = threading.Event()

        def read():
            try:
                with httpx.stream("GET", feed_url(stack), params={"cursor": cursor}, headers=auth(token),
                                  timeout=90, verify=TLS) as r:
                    self.status.put(r.status_code)
                    kind = None
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: "):
                            self.lines.put((kind, json.loads(line[6:])))
            except Exception as exc:  # the connection ended
                self.lines.put(("closed", repr(exc)))
            self.lines.put(("closed", None))

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def until(self, kind: str, timeout: float = 60):
        """The data of the next event whose type ends with `kind`."""
        while True:
            got_kind, data = self.lines.get(timeout=timeout)
            if got_kind and got_kind.endswith(kind):
                return data
            if got_kind == "closed":
                raise AssertionError(f"the stream closed before an {kind!r} event: {data}")

    def close(self):
        self._stop.set()


def sse_status(stack, token: str, **headers) -> httpx.Response:
    """Open the SSE feed and hang up at once: the answer's status (and body, if refused)."""
    with httpx.stream("GET", feed_url(stack), headers={**auth(token), **headers}, timeout=30, verify=TLS) as r:
        if r.status_code != 200:
            r.read()
        return r


# --- a limit of streams per client -----------------------------------------------------------

def test_a_client_may_hold_only_so_many_streams(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env={**ENV, "DISPATCH_STREAMS_PER_CLIENT": "2"})
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "limit-a", {"mode": "stream"}, platform="app")
    b = register(ops, unit["id"], "limit-b", {"mode": "stream"}, platform="app")
    ta, tb = client_token(stack, a), client_token(stack, b)
    wait_known(disp, [a["id"], b["id"]])

    first, second = opened(Conn(stack, ta)), opened(Conn(stack, ta))
    third = Conn(stack, ta)  # Connect: refused with the stable code
    err = refusal(third)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_code(err) == "too_many_streams"
    with grpc.insecure_channel(stack.services["dispatch"].grpc_target) as channel:  # Subscribe
        stream = pb_grpc.DispatchServiceStub(channel).Subscribe(pb.SubscribeRequest(cursor=0), metadata=md(ta),
                                                                 timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            next(iter(stream))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and error_code(err.value) == "too_many_streams"
    refused = sse_status(stack, ta)  # SSE
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams"
    assert refused.json()["error"]["details"] == {"limit": 2}
    other = opened(Conn(stack, tb))  # another client is not affected

    # the open streams still work; one closed frees its place
    item = new_id()
    approve_item(stack, item, unit["id"], {"accounts": [a["id"], b["id"]]})
    assert first.event().item_id == second.event().item_id == other.event().item_id == item
    first.close()
    eventually(lambda: sse_status(stack, ta).status_code == 200)
    for c in (second, other, third):
        c.close()


# --- a bounded mailbox: a slow client is cut and resumes ------------------------------------

def test_a_slow_client_is_cut_off_and_resumes_from_its_cursor(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env={**ENV, "DISPATCH_STREAM_MAILBOX": "10"})
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "slow-a", {"mode": "stream"}, platform="app")
    ta = client_token(stack, a)
    wait_known(disp, [a["id"]])

    # A Connect stream whose client reads nothing: the sends stall on flow control, and what
    # the hub hands over piles up in the stream's mailbox until the bound cuts it.
    channel = grpc.insecure_channel(stack.services["dispatch"].grpc_target)
    stop = threading.Event()

    def requests():
        yield pb.ClientMessage(hello=pb.SubscribeRequest(cursor=0))
        stop.wait()

    call = pb_grpc.DispatchServiceStub(channel).Connect(requests(), metadata=md(ta), timeout=300)
    assert dict(call.initial_metadata()).get("govmedia-stream") == "open"
    log = stack.services["dispatch"].log_path
    items = []
    while "slow consumer" not in log.read_text(errors="replace") and len(items) < 120:
        batch = [new_id() for _ in range(10)]
        for item in batch:
            approve_item(stack, item, unit["id"], {"accounts": [a["id"]]}, body="正文" * 60_000)
        items += batch
        eventually(lambda: all(disp.get(f"/v1/publications/{i}").status_code == 200 for i in batch), timeout=60)
    eventually(lambda: "slow consumer" in log.read_text(errors="replace"), timeout=30)

    # Now it reads: what was written before the cut, then the clear status.
    got = []
    with pytest.raises(grpc.RpcError) as err:
        for message in call:
            if message.WhichOneof("message") == "event":
                got.append(message.event)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and error_code(err.value) == "slow_consumer"
    stop.set()
    channel.close()
    assert len(got) < len(items)
    # It comes back with the cursor of the last event it received: the rest, none lost.
    cursor = got[-1].seq if got else 0
    again = Conn(stack, ta, cursor=cursor)
    seen = {e.item_id for e in got}
    while seen != set(items):
        seen.add(again.event(timeout=60).item_id)  # no event within a minute: one was lost
    again.close()


def test_a_slow_sse_client_is_cut_off_with_an_error_event(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env={**ENV, "DISPATCH_STREAM_MAILBOX": "10",
                                                          "DISPATCH_SSE_MAX_S": "600"})
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "slow-sse", {"mode": "stream"}, platform="app")
    ta = client_token(stack, a)
    wait_known(disp, [a["id"]])
    log = stack.services["dispatch"].log_path
    with httpx.stream("GET", feed_url(stack), headers=auth(ta), timeout=300, verify=TLS) as r:
        assert r.status_code == 200
        items = []  # the client reads nothing while these are pushed
        while "slow consumer" not in log.read_text(errors="replace") and len(items) < 200:
            batch = [new_id() for _ in range(10)]
            for item in batch:
                approve_item(stack, item, unit["id"], {"accounts": [a["id"]]}, body="正文" * 60_000)
            items += batch
            eventually(lambda: all(disp.get(f"/v1/publications/{i}").status_code == 200 for i in batch), timeout=60)
        eventually(lambda: "slow consumer" in log.read_text(errors="replace"), timeout=30)
        kind, last_id, got = None, 0, set()
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("id: "):
                last_id = int(line[4:])
            elif line.startswith("data: ") and kind == "error":
                assert json.loads(line[6:])["error"]["code"] == "slow_consumer"
                break
            elif line.startswith("data: "):
                got.add(json.loads(line[6:])["item_id"])
        else:
            raise AssertionError("the feed ended without the slow_consumer event")
    assert len(got) < len(items)
    # it resumes with the id of the last event it received: the rest, none lost
    rest = Sse(stack, ta, cursor=last_id)
    assert rest.status.get(timeout=30) == 200
    while got != set(items):
        got.add(rest.until(".published")["item_id"])
    rest.close()


# --- closing the account, revoking the secret ------------------------------------------------

def test_closing_the_account_or_revoking_the_secret_ends_open_streams(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env={**ENV, "DISPATCH_STREAM_RECHECK_S": "0.5",
                                                          "JWKS_REFRESH_S": "1"})
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    editor, principal = client(stack, "account", login(stack, "editor")), client(stack, "account", login(stack, "reviewer3"))
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "closing-a", {"mode": "stream"}, platform="app")
    b = register(ops, unit["id"], "revoked-b", {"mode": "stream"}, platform="app")
    ta, tb = client_token(stack, a), client_token(stack, b)
    wait_known(disp, [a["id"], b["id"]])
    ca, cb = opened(Conn(stack, ta)), opened(Conn(stack, tb))
    sa, sb = Sse(stack, ta), Sse(stack, tb)
    assert sa.status.get(timeout=30) == 200 and sb.status.get(timeout=30) == 200
    item = new_id()
    approve_item(stack, item, unit["id"], {"accounts": [a["id"], b["id"]]})
    assert ca.event().item_id == cb.event().item_id == item
    assert sa.until(".published")["item_id"] == sb.until(".published")["item_id"] == item

    # b's secret is revoked: its token (issued before) stops verifying, its streams end
    assert ops.delete(f"/v1/accounts/{b['id']}/client-secret").status_code == 204
    err = refusal(cb)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and error_code(err) == "stream_token_revoked"
    assert sb.until("error")["error"]["code"] == "stream_token_revoked"

    # a is closed: request → approval (its announcement still reaches it) → deregistered
    assert editor.post(f"/v1/accounts/{a['id']}/closing", json={"reason": "职能调整"}).status_code == 200
    assert principal.post(f"/v1/accounts/{a['id']}/approve-closing", json={}).status_code == 200
    gone = editor.post(f"/v1/accounts/{a['id']}/deregister", json={"deregistered_on": "2026-11-02"})
    assert gone.status_code == 200, gone.text
    err = refusal(ca)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and error_code(err) == "account_not_receiving"
    assert sa.until("error")["error"]["code"] == "account_not_receiving"
    # and a new stream with the token it still holds is refused at once
    assert_error(sse_status(stack, ta), 403, "account_not_receiving")
    err = refusal(Conn(stack, ta))
    assert error_code(err) == "account_not_receiving"
    for c in (ca, cb):
        c.close()
    for s in (sa, sb):
        s.close()


# --- Last-Event-ID -------------------------------------------------------------------------

def test_last_event_id_must_be_ascii_digits(stack_factory, db_backend):
    stack = stack_factory(db_backend, only=SERVICES, env=ENV)
    ops_token = login(stack, "ops")
    ops, disp = client(stack, "account", ops_token), client(stack, "dispatch", ops_token)
    unit = demo_unit(ops)
    a = register(ops, unit["id"], "lei-a", {"mode": "stream"}, platform="app")
    ta = client_token(stack, a)
    wait_known(disp, [a["id"]])
    for value in ("٣".encode(), "３".encode(), "١٢".encode(), b"\xb2", b"12abc", b"-1", b"+5", b"5.0",
                  b"99999999999999999999", b"9223372036854775808"):
        r = sse_status(stack, ta, **{"Last-Event-ID": value})
        assert_error(r, 400, "invalid_last_event_id")
    r = sse_status(stack, ta, **{"Last-Event-ID": b"0"})
    assert r.status_code == 200
    # the cursor as a query parameter: a seq is a BIGINT
    with httpx.stream("GET", feed_url(stack), params={"cursor": str(2**63)}, headers=auth(ta), timeout=30,
                      verify=TLS) as r:
        r.read()
        assert_error(r, 422, "validation_failed")

"""The request guard in front of every REST API (pure: a tiny ASGI app behind it)."""
from __future__ import annotations

import httpx
import pytest
from hypothesis import given, strategies as st

from govmedia_kit.guard import MAX_JSON_DEPTH, BodyRule, RequestGuard, json_depth_exceeds


async def upload_app(scope, receive, send):
    """Reads the body as a stream (like an upload handler) and answers its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(size).encode()})


def guarded(**kwargs) -> httpx.AsyncClient:
    app = RequestGuard(upload_app, [BodyRule(r"/upload/[^/]+", 8 * 1024 * 1024, ("image/*",))], **kwargs)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


async def test_upload_paths_stream_within_their_limit():
    async with guarded() as http:
        ok = await http.post("/upload/a", content=b"x" * (5 << 20), headers={"content-type": "image/jpeg"})
        assert ok.status_code == 200 and ok.text == str(5 << 20)
        async def chunks():  # no Content-Length: counted while read
            for _ in range(9):
                yield b"x" * (1 << 20)

        big = await http.post("/upload/a", content=chunks(), headers={"content-type": "image/png"})
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        assert (await http.post("/upload/a", content=b"x", headers={"content-type": "application/pdf"})).status_code == 415
        # An image type is allowed only where a rule says so.
        other = await http.post("/elsewhere", content=b"x", headers={"content-type": "image/jpeg"})
        assert other.status_code == 415


async def test_reads_bodiless_and_declared_lengths():
    async with guarded(default_limit=10) as http:
        assert (await http.get("/anything")).status_code == 200
        assert (await http.post("/anything")).status_code == 200  # no body at all
        big = await http.post("/anything", content=b"x" * 11, headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"]["details"] == {"limit": 10}


@pytest.mark.parametrize("body, deep", [
    (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, False),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), True),
    (b'{"a": "' + b"[" * 100 + b'"}', False),  # brackets inside a string do not nest
    (b'{"a": "\\\\"' + b", \"b\": " + b"[" * 40 + b"]" * 40 + b"}", True),  # an escaped backslash ends no string
    (b'["\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["]', False),  # an escaped quote does not end the string
])
def test_json_depth_scan(body, deep):
    assert json_depth_exceeds(body) is deep


@given(st.recursive(st.none() | st.integers() | st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
                    max_leaves=50))
def test_json_depth_scan_agrees_with_the_structure(value):
    import json

    def depth(v) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert json_depth_exceeds(json.dumps(value).encode(), limit=3) is (depth(value) > 3)


async def test_a_body_too_large_behind_a_base_http_middleware_is_413():
    """Starlette's BaseHTTPMiddleware (the kit's idempotency layer) re-raises what the handler
    raised inside an ExceptionGroup; the guard still answers 413."""
    from starlette.applications import Starlette
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def upload(request):
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return PlainTextResponse(str(size))

    async def passthrough(request, call_next):
        return await call_next(request)

    # As in govmedia_kit/runtime.py: the idempotency layer, then the guard outside it.
    app = Starlette(routes=[Route("/upload/a", upload, methods=["POST"])])
    app.add_middleware(BaseHTTPMiddleware, dispatch=passthrough)
    app.add_middleware(RequestGuard, rules=[BodyRule(r"/upload/[^/]+", 8 * 1024 * 1024, ("image/*",))])

    async def chunks():
        for _ in range(9):
            yield b"x" * (1 << 20)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/upload/a", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_nul_anywhere_in_a_request_is_refused_before_any_handler():
    """PostgreSQL cannot store U+0000: in a path, a query, a JSON or a form body it is 400
    `invalid_character` for every method, whatever the handler; an escaped backslash
    followed by "u0000" is ordinary text."""
    async with guarded() as http:
        refused = [
            await http.get("/v1/accounts/a%00b"),
            await http.get("/v1/ledger", params={"region": "\x00"}),
            await http.delete("/v1/items/x%00"),
            await http.post("/v1/drafts", content=b'{"title": "a\\u0000b"}', headers={"content-type": "application/json"}),
            await http.post("/v1/auth/token", content=b"username=ops%00&password=x",
                            headers={"content-type": "application/x-www-form-urlencoded"}),
        ]
        for r in refused:
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_character", r.text
        text = await http.post("/v1/drafts", content=b'{"title": "C:\\\\u0000"}', headers={"content-type": "application/json"})
        assert text.status_code == 200
        assert (await http.get("/v1/ledger", params={"region": "%2500"})).status_code == 200


def test_nul_in_any_text_field_of_a_grpc_request_is_found():
    from govmedia.petition.v1 import petition_import_pb2 as pb
    from govmedia_kit.grpc import contains_nul

    clean = pb.ImportHotlineRequest(work_order_no="GD-1", title="噪音", contact=pb.ImportContact(name="张三"))
    assert not contains_nul(clean)
    assert contains_nul(pb.ImportHotlineRequest(work_order_no="GD-\x00"))
    assert contains_nul(pb.ImportHotlineRequest(contact=pb.ImportContact(phone="138\x00")))  # nested


def test_a_multipart_part_is_a_file_only_with_a_real_filename_parameter():
    """As the form parser decides it: `x-filename=` or `filename*=` do not make a file part, so a
    NUL in such a part's value is refused like any field's."""
    from govmedia_kit.guard import multipart_has_nul

    content_type = b"multipart/form-data; boundary=XyZ"

    def form(disposition: bytes, value: bytes) -> bytes:
        return b"--XyZ\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n--XyZ--\r\n"
    assert multipart_has_nul(form(b'form-data; name="title"; x-filename="a"', b"ab\x00cd"), content_type)
    assert multipart_has_nul(form(b"form-data; name=\"title\"; filename*=UTF-8''a", b"ab\x00cd"), content_type)
    assert multipart_has_nul(form(b'form-data; name="title"', b"ab\x00cd"), content_type)
    assert not multipart_has_nul(form(b'form-data; name="file"; filename="a.bin"', b"ab\x00cd"), content_type)

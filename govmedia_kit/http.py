"""The FastAPI app factory: error format, health and readiness, Idempotency-Key."""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .db import Database, utcnow
from .errors import AppError, validation_details
from .guard import read_body, replay_body
from .outbox import KitTables

log = logging.getLogger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def error_response(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details}}, status_code=status,
                        headers=headers)


def create_app(
    service: str,
    *,
    ready: Callable[[], Awaitable[dict[str, bool]]],
    lifespan=None,
) -> FastAPI:
    metrics.setup(service)
    app = _App(title=f"govmedia {service}", version="1", lifespan=lifespan)

    @app.exception_handler(AppError)
    async def _app_error(_request: Request, exc: AppError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        return error_response(422, "validation_failed", "请求参数不合法", validation_details(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        code = _CODES_BY_STATUS.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # The route template, not the path: a path may hold a secret (a tracking code).
        from .metrics import route_template

        log.exception("unhandled error on %s %s", request.method, route_template(request.scope))
        return error_response(500, "internal_error", "服务内部错误，请稍后重试")

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        checks = await ready()
        ok = all(checks.values())
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    # Prometheus text format, no token (the scraper has none): route templates, states and
    # counts only, nothing personal or secret (govmedia_kit/metrics.py).
    app.add_api_route("/metrics", metrics.metrics_endpoint, methods=["GET"], include_in_schema=False)
    return app


class _App(FastAPI):
    """FastAPI whose request metrics sit outside every middleware added later (the guard,
    idempotency), so what those answer by themselves is counted as well."""

    def build_middleware_stack(self):
        if not any(m.cls is metrics.RequestMetrics for m in self.user_middleware):
            self.user_middleware.insert(0, Middleware(metrics.RequestMetrics))
        return super().build_middleware_stack()


IDEMPOTENCY_TTL = timedelta(hours=24)
# A key reserved by a request whose process died (or whose outcome could not be recorded) is
# free again after this, not after the whole TTL: long enough for any handler, uploads included.
RESERVATION_LEASE = timedelta(minutes=15)
# Paths whose answers carry a secret shown once (tokens): no key is even reserved.
_NOT_REPLAYED = ("/v1/auth/",)
# Anonymous callers' keys are bound to the body's hash (below): their bodies are read before
# the handler, up to this much. A larger anonymous body is passed through without idempotent
# replay (the platform's anonymous writes are small JSON forms, 1 MiB at most at the front door).
MAX_BUFFERED_BODY = 1024 * 1024
# An answer is kept for replay up to this size; a larger one is answered but not kept (the
# key stays taken and a repeat is told so: 409 idempotency_answer_withheld).
MAX_STORED_ANSWER = 1024 * 1024
# Field names that mark a credential in a JSON answer (at any depth): such an answer is never
# stored, since a replay would hand the secret out again to whoever presents the key.
SECRET_FIELDS = frozenset({
    "client_secret", "access_token", "refresh_token", "id_token", "password", "secret", "webhook_secret",
    "totp_secret", "otpauth_uri", "otpauth_url", "recovery_codes", "private_key", "api_key",
})
WITHHELD = "application/vnd.govmedia.withheld"  # content_type of a key whose answer was not kept


def install_idempotency(app: FastAPI, db: Database, tables: KitTables) -> None:
    """Writes with an `Idempotency-Key` header are applied once and their answer replayed.

    The key is scoped to the caller (the verified subject of its token, so nobody else can
    replay it), the method and the path, and is reserved before the handler runs, so two
    concurrent copies cannot both apply. Only successful answers are kept (24 h); after a
    refusal the key is free again, since a refusal changed nothing.

    The request body is never held whole for a signed-in caller: it streams to the handler
    and is hashed as it passes (an upload of hundreds of MiB costs no memory here); the hash
    is stored with the answer, and a repeat's body is hashed as it is read and thrown away.
    An answer that carries a secret (`Cache-Control: no-store`, or a JSON field named in
    SECRET_FIELDS) is not kept: the key stays taken, and a repeat gets 409
    `idempotency_answer_withheld` (the request was applied; the secret is not handed out a
    second time, to anyone) instead of a copy.
    """
    app.add_middleware(IdempotencyMiddleware, db=db, table=tables.idempotency)


class IdempotencyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): the request body passes through in chunks."""

    def __init__(self, app, db: Database, table):
        self.app = app
        self.db = db
        self.table = table

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in _WRITE_METHODS \
                or scope["path"].startswith(_NOT_REPLAYED):
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        key = headers.get("idempotency-key")
        if not key:
            return await self.app(scope, receive, send)
        if len(key) > 200:
            return await _answer(scope, send, error_response(400, "idempotency_key_too_long",
                                                      "Idempotency-Key 过长（最多 200 个字符）"))
        body = hasher = None
        caller = await _verified_caller(scope, headers.get("authorization", ""))
        if caller is None:  # anonymous (or a token that does not verify): bound to the body
            declared = headers.get("content-length")
            if declared is None or not declared.isdigit() or int(declared) > MAX_BUFFERED_BODY:
                return await self.app(scope, receive, send)  # no replay for a large anonymous body
            body = await read_body(receive, MAX_BUFFERED_BODY)
            if body is None:
                return await self.app(scope, receive, send)
            request_hash = hashlib.sha256(body).hexdigest()
            client = scope.get("client") or ("", 0)
            authorization = headers.get("authorization", "")
            caller = f"raw:{authorization}" if authorization else f"anon:{client[0]}:{request_hash}"
            receive = replay_body(body, receive)
        else:
            hasher = hashlib.sha256()
            receive = _hashing(receive, hasher)
        # Stored as a hash: a fixed length whatever the path and key, and no path (a tracking
        # code is a secret) or key in the database.
        key_scope = hashlib.sha256(f"{caller}\n{scope['method']}\n{scope['path']}\n{key}".encode()).hexdigest()
        now = utcnow()
        table = self.table
        try:
            async with self.db.transaction() as s:
                await s.execute(delete(table).where(table.c.scope == key_scope, or_(
                    table.c.created_at < now - IDEMPOTENCY_TTL,
                    and_(table.c.status == 0, table.c.created_at < now - RESERVATION_LEASE))))
                await s.execute(insert(table).values(
                    scope=key_scope, request_hash=request_hash if hasher is None else "", status=0, body=b"",
                    content_type="", created_at=now))
        except IntegrityError:
            return await self._repeat(scope, key_scope, receive, send, hasher, request_hash if hasher is None else None)
        status, response_headers, content = 0, [], bytearray()
        too_large = False

        async def keep(message):
            nonlocal status, response_headers, too_large
            if message["type"] == "http.response.start":
                status, response_headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                content.extend(message.get("body", b""))
                too_large = too_large or len(content) > MAX_STORED_ANSWER

        try:
            await self.app(scope, receive, keep)
            if hasher is not None and 200 <= status < 300:
                await _drain(receive)  # a body the handler did not read to the end: hashed all the same
        except BaseException:
            await _release(self.db, table, key_scope)
            raise
        if 200 <= status < 300:
            values = {"status": status, "body": bytes(content), "content_type": _header(response_headers,
                                                                                        b"content-type")}
            if too_large or _carries_secret(response_headers, content):
                values.update(body=b"", content_type=WITHHELD)
            if hasher is not None:
                values["request_hash"] = hasher.hexdigest()
            async with self.db.transaction() as s:
                await s.execute(update(table).where(table.c.scope == key_scope).values(**values))
        else:
            await _release(self.db, table, key_scope)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k, v) for k, v in response_headers if k.lower() != b"content-length"]
                    + [(b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": bytes(content)})

    async def _repeat(self, scope, key_scope: str, receive, send, hasher, request_hash: str | None) -> None:
        """The key is taken: in use, reused with another body, withheld, or replayed."""
        async with self.db.session() as s:
            row = (await s.execute(select(self.table).where(self.table.c.scope == key_scope))).first()
        if row is None or row.status == 0:  # in hand (or the other copy failed and freed it meanwhile)
            return await _answer(scope, send, error_response(
                409, "idempotency_key_in_use", "同一 Idempotency-Key 的请求正在处理，请稍后重试"))
        if hasher is not None:
            await _drain(receive)  # read (hashed, not kept) to compare with the first body
            request_hash = hasher.hexdigest()
        # (anonymous: the body was read and hashed before; a caller whose token does not verify
        # is scoped by its header, so the body is compared here too)
        if row.request_hash != request_hash:
            return await _answer(scope, send, error_response(
                422, "idempotency_key_reused", "同一 Idempotency-Key 已用于不同的请求内容"))
        if row.content_type == WITHHELD:
            return await _answer(scope, send, error_response(
                409, "idempotency_answer_withheld",
                "该请求已执行；其应答含密钥或过大，不予重放。如未收到应答，请查询结果或重新申请密钥",
                {"status": row.status}, headers={"Idempotent-Replayed": "true"}))
        await _answer(scope, send, Response(row.body, status_code=row.status, media_type=row.content_type,
                                     headers={"Idempotent-Replayed": "true"}))


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _header(headers: list, name: bytes) -> str:
    for k, v in headers:
        if k.lower() == name:
            return v.decode("latin-1")
    return "application/json" if name == b"content-type" else ""


async def _answer(scope, send, response: Response) -> None:
    await response(scope, None, send)


def _carries_secret(headers: list, content: bytes) -> bool:
    """An answer not to keep: marked `Cache-Control: no-store` by its route, or a JSON body
    with a non-empty field named as a credential (SECRET_FIELDS) at any depth."""
    if "no-store" in _header(headers, b"cache-control").lower():
        return True
    if not _header(headers, b"content-type").startswith("application/json") or not content:
        return False
    try:
        document = json.loads(content)
    except ValueError:
        return True  # unreadable: not kept, rather than kept unchecked
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for name, value in node.items():
                if name.lower() in SECRET_FIELDS and value not in (None, "", [], {}):
                    return True
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return False


async def _verified_caller(scope, authorization: str) -> str | None:
    """Whose key it is: the verified subject of the token (so a refreshed token keeps its
    keys); None when there is no token or it does not verify (then the key is bound to the
    body as well: anonymous callers share no scope, so nobody can replay another citizen's
    answer)."""
    if not authorization.lower().startswith("bearer "):
        return None
    app = scope.get("app")
    verifier = getattr(app.state, "verifier", None) if app is not None else None
    if verifier is None:
        return None
    try:
        who = await verifier.verify(authorization[7:].strip())
    except AppError:
        return None
    return f"sub:{who.subject}:{who.account_id}"


def _hashing(receive, hasher):
    """The request's messages as they come, each chunk added to `hasher`; `done` once the
    last chunk passed."""
    state = {"done": False}

    async def hashing():
        if state["done"]:
            return await receive()
        message = await receive()
        if message["type"] == "http.request":
            hasher.update(message.get("body", b""))
            if not message.get("more_body", False):
                state["done"] = True
        return message

    hashing.state = state  # type: ignore[attr-defined]
    return hashing


async def _drain(receive) -> None:
    """Read what is left of a hashed body (hashed as it passes, kept nowhere)."""
    state = getattr(receive, "state", None)
    while state is not None and not state["done"]:
        message = await receive()
        if message["type"] != "http.request":
            break


async def _release(db: Database, table, scope: str) -> None:
    async with db.transaction() as s:
        await s.execute(delete(table).where(table.c.scope == scope))

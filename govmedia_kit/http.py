"""The FastAPI app factory: error format, health and readiness, Idempotency-Key."""
from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware import Middleware
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import metrics
from .db import Database, utcnow
from .errors import AppError, validation_details
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
# Answers that carry a secret shown once (tokens) are never stored for replay.
_NOT_REPLAYED = ("/v1/auth/",)


def install_idempotency(app: FastAPI, db: Database, tables: KitTables) -> None:
    """Writes with an `Idempotency-Key` header are applied once and their answer replayed.

    The key is scoped to the caller (the verified subject of its token, so nobody else can
    replay it), the method and the path, and is reserved before the handler runs, so two
    concurrent copies cannot both apply. Only successful answers are kept (24 h); after a
    refusal the key is free again, since a refusal changed nothing.
    """
    table = tables.idempotency

    @app.middleware("http")
    async def idempotency(request: Request, call_next):
        key = request.headers.get("idempotency-key")
        if request.method not in _WRITE_METHODS or not key or request.url.path.startswith(_NOT_REPLAYED):
            return await call_next(request)
        if len(key) > 200:
            return error_response(400, "idempotency_key_too_long", "Idempotency-Key 过长（最多 200 个字符）")
        body = await request.body()
        request_hash = hashlib.sha256(body).hexdigest()
        caller = hashlib.sha256((await _caller_id(request, request_hash)).encode()).hexdigest()[:32]
        scope = f"{caller}:{request.method}:{request.url.path}:{key}"
        now = utcnow()
        try:
            async with db.transaction() as s:
                await s.execute(delete(table).where(table.c.scope == scope, table.c.created_at < now - IDEMPOTENCY_TTL))
                await s.execute(insert(table).values(scope=scope, request_hash=request_hash, status=0, body=b"",
                                                     content_type="", created_at=now))
        except IntegrityError:
            async with db.session() as s:
                row = (await s.execute(select(table).where(table.c.scope == scope))).first()
            if row is None:  # the other copy failed and freed the key meanwhile
                return error_response(409, "idempotency_key_in_use", "同一 Idempotency-Key 的请求正在处理，请稍后重试")
            if row.request_hash != request_hash:
                return error_response(422, "idempotency_key_reused", "同一 Idempotency-Key 已用于不同的请求内容")
            if row.status == 0:
                return error_response(409, "idempotency_key_in_use", "同一 Idempotency-Key 的请求正在处理，请稍后重试")
            return Response(row.body, status_code=row.status, media_type=row.content_type,
                            headers={"Idempotent-Replayed": "true"})
        try:
            response = await call_next(request)
            content = b"".join([chunk async for chunk in response.body_iterator])
        except BaseException:
            await _release(db, table, scope)
            raise
        headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
        if 200 <= response.status_code < 300:
            async with db.transaction() as s:
                await s.execute(update(table).where(table.c.scope == scope).values(
                    status=response.status_code, body=content,
                    content_type=response.headers.get("content-type", "application/json")))
        else:
            await _release(db, table, scope)
        return Response(content, status_code=response.status_code, headers=headers)


async def _caller_id(request: Request, request_hash: str) -> str:
    """Whose key it is: the verified subject of the token (so a refreshed token keeps its
    keys), else the raw header (the handler will refuse it anyway). Anonymous callers
    (public intake) share no scope: their keys are bound to the client address and the
    body, so nobody can replay another citizen's answer."""
    authorization = request.headers.get("authorization", "")
    if not authorization:
        return f"anon:{request.client.host if request.client else ''}:{request_hash}"
    verifier = getattr(request.app.state, "verifier", None)
    if verifier is not None and authorization.lower().startswith("bearer "):
        try:
            who = await verifier.verify(authorization[7:].strip())
            return f"sub:{who.subject}:{who.account_id}"
        except AppError:
            pass
    return f"raw:{authorization}"


async def _release(db: Database, table, scope: str) -> None:
    async with db.transaction() as s:
        await s.execute(delete(table).where(table.c.scope == scope))

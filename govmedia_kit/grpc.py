"""The gRPC server: health checking (what Kubernetes probes call), reflection (grpcurl),
tracing when enabled, metrics per method (always), and AppError → status code with the
stable code in trailers."""
from __future__ import annotations

import functools
import logging
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pydantic import ValidationError

from . import metrics
from .errors import AppError, invalid, validation_details

log = logging.getLogger(__name__)


def build_server(
    port: int,
    adders: Iterable[Callable[[grpc.aio.Server], None]],
    service_names: Iterable[str],
    interceptors: list | None = None,
    host: str = "[::]",
    options: list[tuple[str, object]] | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    # The metrics interceptor is outermost: it sees the final status of every call.
    server = grpc.aio.server(interceptors=[metrics.grpc_interceptor(), *(interceptors or [])],
                             options=options or None)
    for add in adders:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = list(service_names)
    reflection.enable_server_reflection(names + [health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    return server, health_servicer, bound


async def set_serving(health_servicer, names: Iterable[str], serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *names]:
        await health_servicer.set(name, status)


def grpc_errors(method):
    """Wrap a unary servicer method so AppError becomes a gRPC status with its code."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            refuse_nul(request)
            return await method(self, request, context)
        except AppError as exc:
            trailers = [("error-code", exc.code)]
            if exc.headers and "Retry-After" in exc.headers:  # a 429's wait, as REST's header
                trailers.append(("retry-after", exc.headers["Retry-After"]))
            trailers += list(getattr(exc, "trailers", {}).items())  # e.g. sign-in's enrolment-ticket
            context.set_trailing_metadata(tuple(trailers))
            await context.abort(exc.grpc_status, f"{exc.code}: {exc.message}")
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unhandled error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal_error: 服务内部错误")

    return wrapper


NUL_REFUSED = "请求中含有空字符（U+0000）"


def refuse_nul(message) -> None:
    """invalid_character when a text field of the message holds U+0000: PostgreSQL cannot
    store it, and no real text needs it. Unary calls are checked by grpc_errors; a streaming
    call checks each message it reads."""
    if contains_nul(message):
        raise invalid("invalid_character", NUL_REFUSED)


def refuse_nul_in(texts: Iterable[str]) -> None:
    """refuse_nul for strings already taken out of a message: a stream's acknowledgement
    (its ids) once per client per event, where walking the message cost more than the rest."""
    if any("\x00" in t for t in texts):
        raise invalid("invalid_character", NUL_REFUSED)


def contains_nul(message) -> bool:
    """Whether any text field of a protobuf message, at any depth, holds U+0000."""
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = value.items()
            if any("\x00" in k for k, _ in entries if isinstance(k, str)):
                return True
            values = [v for _, v in entries]
        else:
            values = value if field.is_repeated else [value]
        for item in values:
            if isinstance(item, str) and "\x00" in item:
                return True
            if hasattr(item, "ListFields") and contains_nul(item):
                return True
    return False


def parse_request(model, **values):
    """Validate a gRPC request with the same pydantic model, and the same error, as the REST body."""
    try:
        return model(**values)
    except ValidationError as exc:
        raise invalid("validation_failed", "请求参数不合法", validation_details(exc.errors()))


def page_limit(value: int, default: int = 50, most: int = 200) -> int:
    """gRPC has no 'absent': 0 means the default page size."""
    return min(max(value or default, 1), most)

"""One error type for every use case, mapped to REST and gRPC by the transports.

REST answers `{"error": {"code", "message", "details"}}` (DESIGN.md §5); gRPC answers the
matching status code with the code in the `error-code` trailing metadata.
"""
from __future__ import annotations

from typing import Any

import grpc

_GRPC_BY_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    428: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class AppError(Exception):
    """A refusal with a stable snake_case code, a zh-CN message and an HTTP status."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers  # REST only, e.g. Retry-After on a 429

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @property
    def grpc_status(self) -> grpc.StatusCode:
        return _GRPC_BY_HTTP.get(self.status, grpc.StatusCode.UNKNOWN)


def validation_details(errors: list[dict]) -> list[dict]:
    """pydantic's errors as the `details` of `validation_failed` (REST and gRPC alike)."""
    return [
        {"field": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]


def invalid(code: str, message: str, details: Any = None) -> AppError:
    return AppError(422, code, message, details)


def not_found(what: str, ident: str) -> AppError:
    return AppError(404, f"{what}_not_found", f"未找到{_ZH.get(what, what)}", {"id": ident})


def forbidden(code: str = "forbidden", message: str = "无权执行此操作") -> AppError:
    return AppError(403, code, message)


def unauthenticated(message: str = "需要有效的访问令牌") -> AppError:
    return AppError(401, "unauthenticated", message)


def conflict(code: str, message: str, details: Any = None) -> AppError:
    return AppError(409, code, message, details)


_ZH = {
    "region": "区域",
    "unit": "单位",
    "user": "用户",
    "account": "账号",
    "draft": "稿件",
    "item": "稿件",
    "review": "审核单",
    "publication": "发布记录",
    "retraction": "撤稿记录",
    "petition": "留言",
}

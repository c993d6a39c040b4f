"""The front door of every REST API: what a request body may be before any handler sees it.

- Size: `Content-Length` over the path's limit is refused at once (413); a body without a
  length is counted as it arrives and refused when it passes the limit.
- Type: a write with a body must be JSON, a form or multipart, or a type the path allows
  (an upload's image/jpeg); anything else is 415.
- JSON: invalid UTF-8 and nesting deeper than MAX_JSON_DEPTH are 400 before the parser
  runs (Python's parser would recurse until it fails with an internal error).
- NUL (U+0000), in the path, the query string or a JSON or form body (urlencoded, or a
  multipart form's field names and plain values: a file part's bytes may hold NUL), of any method, is 400
  `invalid_character`: PostgreSQL cannot store it (the request would end in an internal
  error there, and be stored on SQLite), and no real text needs it. (gRPC requests:
  `grpc.contains_nul`.)

Every refusal is the platform's error body with a stable code, and nothing is stored,
since the handler never runs.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from python_multipart.multipart import parse_options_header

DEFAULT_LIMIT = 1024 * 1024  # 1 MiB: every JSON body of the platform is far smaller
BUFFERED_LIMIT = 4 * 1024 * 1024  # bodies up to this are read whole and checked here
MAX_JSON_DEPTH = 32
_BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")
_WRITES = {"POST", "PUT", "PATCH"}


@dataclass(frozen=True)
class BodyRule:
    """A path (regex, full match) whose body may be larger or of other types (uploads)."""

    path: str
    limit: int
    types: tuple[str, ...] = ()  # extra media types, "image/*" style wildcards allowed

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.path, path) is not None


class BodyTooLarge(Exception):
    pass


# A JSON escape \u0000 that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _has_nul(scope) -> bool:
    return "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"")


_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
_DISPOSITION = re.compile(rb"^content-disposition:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)


def _is_file_part(head: bytes) -> bool:
    """Whether the form parser will take this part as a file: as Starlette decides it, a real
    `filename` parameter (not `x-filename=` or `filename*=` somewhere in the header's text)."""
    match = _DISPOSITION.search(head)
    if not match:
        return False
    return b"filename" in parse_options_header(match.group(1).rstrip(b"\r"))[1]


def multipart_has_nul(body: bytes, content_type: bytes) -> bool:
    """A NUL byte in a multipart form outside a file part's content: in a part's headers (a
    field name) or in a plain field's value. A file's bytes may hold NUL; text never does."""
    if b"\x00" not in body:
        return False
    match = _BOUNDARY.search(content_type)
    if not match:
        return True
    for part in body.split(b"--" + match.group(1)):
        head, _, content = part.partition(b"\r\n\r\n")
        if b"\x00" in head or (b"\x00" in content and not _is_file_part(head)):
            return True
    return False


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether brackets nest deeper than `limit` outside strings (a scan, not a parse)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _media_type(headers: dict[bytes, bytes]) -> str:
    return headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()


def _type_allowed(media_type: str, extra: tuple[str, ...]) -> bool:
    if media_type in _BODY_TYPES:
        return True
    return any(media_type == t or (t.endswith("/*") and media_type.startswith(t[:-1])) for t in extra)


class RequestGuard:
    def __init__(self, app, rules: list[BodyRule] | tuple[BodyRule, ...] = (), default_limit: int = DEFAULT_LIMIT):
        self.app = app
        self.rules = tuple(rules)
        self.default_limit = default_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and _has_nul(scope):
            return await _refuse(send, 400, "invalid_character", "请求地址中含有空字符（U+0000）")
        if scope["type"] != "http" or scope["method"] not in _WRITES:
            return await self.app(scope, receive, send)
        rule = next((r for r in self.rules if r.matches(scope["path"])), None)
        limit = rule.limit if rule else self.default_limit
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        try:
            declared_length = int(declared) if declared is not None else None
        except ValueError:
            return await _refuse(send, 400, "bad_content_length", "Content-Length 不合法")
        if declared_length is not None and declared_length > limit:
            return await _refuse(send, 413, "payload_too_large", f"请求体过大（上限 {limit} 字节）", {"limit": limit})
        if declared_length == 0 or (declared_length is None and b"transfer-encoding" not in headers):
            return await self.app(scope, receive, send)  # no body
        media_type = _media_type(headers)
        if not _type_allowed(media_type, rule.types if rule else ()):
            return await _refuse(send, 415, "unsupported_media_type", f"不支持的请求体类型：{media_type or '未声明'}",
                                 {"content_type": media_type})
        if limit > BUFFERED_LIMIT:
            return await self._streamed(scope, receive, send, limit)
        body = await read_body(receive, limit)
        if body is None:
            return await _refuse(send, 413, "payload_too_large", f"请求体过大（上限 {limit} 字节）", {"limit": limit})
        if media_type == "application/json" and body:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                return await _refuse(send, 400, "invalid_encoding", "请求体不是合法的 UTF-8 文本")
            if json_depth_exceeds(body):
                return await _refuse(send, 400, "json_too_deep", f"JSON 嵌套超过 {MAX_JSON_DEPTH} 层")
            if _JSON_NUL.search(body):
                return await _refuse(send, 400, "invalid_character", "请求体中含有空字符（U+0000）")
        elif media_type == "application/x-www-form-urlencoded" and (b"%00" in body or b"\x00" in body):
            return await _refuse(send, 400, "invalid_character", "请求体中含有空字符（U+0000）")
        elif media_type == "multipart/form-data" and multipart_has_nul(body, headers.get(b"content-type", b"")):
            return await _refuse(send, 400, "invalid_character", "表单中含有空字符（U+0000）")
        return await self.app(scope, replay_body(body, receive), send)

    async def _streamed(self, scope, receive, send, limit: int):
        """Large bodies (uploads) pass through, counted; the handler reading past the limit
        gets BodyTooLarge, answered 413 if nothing was sent yet."""
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except BaseException as exc:
            # A Starlette BaseHTTPMiddleware in between would hand it back in an ExceptionGroup.
            too_large = isinstance(exc, BodyTooLarge) or (
                isinstance(exc, BaseExceptionGroup) and exc.subgroup(BodyTooLarge) is not None)
            if started or not too_large:
                raise
            await _refuse(send, 413, "payload_too_large", f"请求体过大（上限 {limit} 字节）", {"limit": limit})


async def read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None once it passes `limit` (what was read is then lost)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay_body(body: bytes, receive):
    """The body read here, then the connection's own messages (its disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send, status: int, code: str, message: str, details=None) -> None:
    payload = json.dumps({"error": {"code": code, "message": message, "details": details}},
                         ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})

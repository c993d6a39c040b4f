"""A lean HTTP/1.1 client for the webhook POST: keep-alive connections pooled per
(scheme, host, port), one request at a time on each, on asyncio's Protocol API.

Why not aiohttp: profiled at 10,000 webhooks, aiohttp's request machinery (URL objects,
request and response objects, header multidicts, payload registry, tracing hooks) took
about 40 % of dispatch's CPU; a webhook needs none of it. What this one does:
- sends `POST path HTTP/1.1` with Host, Content-Length and the given headers;
- answers the status code; reads the answer body (Content-Length, chunked, or up to the
  close) and throws it away, at most MAX_ANSWER bytes: a longer one costs its connection,
  not our memory;
- reuses the connection unless the server said `Connection: close`, spoke HTTP/1.0, or
  the body was cut; a reused connection the server had closed meanwhile (no byte of an
  answer came) is retried once on a new one, as browsers and aiohttp do;
- one timeout for the whole exchange (connect, send, answer): the connection is dropped;
- https through an ssl context (certificates verified against the system's CAs);
- 1xx interim answers are skipped; redirects are not followed (the status is the answer);
- with an egress policy (govmedia_kit/egress.py), each new connection resolves the host
  itself, checks every address, and connects to a checked one (the URL's Host header and
  TLS server name unchanged): a name re-pointed inside after registration (DNS rebinding)
  is refused (`EgressRefused`) before a byte is sent;
- `describe` words a failure for the delivery's stored error without any address a name
  resolved to (an OSError's text carries it).
"""
from __future__ import annotations

import asyncio
import errno
import socket
import ssl
import time
from collections import deque
from functools import lru_cache
from urllib.parse import urlsplit

from govmedia_kit.egress import EgressPolicy, EgressRefused

MAX_ANSWER = 64 * 1024  # of an answer's body read
MAX_HEAD = 64 * 1024  # status line and headers
IDLE_S = 30.0  # an idle connection older than this is closed rather than reused


class HttpError(Exception):
    """The exchange failed without an answer (refused, reset, malformed answer, bad URL)."""


@lru_cache(maxsize=65536)
def parse_url(url: str) -> tuple[tuple[str, str, int], bytes, bytes]:
    """(pool key, request target, Host header value), cached: the ledger's URLs repeat."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"unsupported URL scheme or no host: {parts.scheme or '?'}")
    if any(c in url for c in " \r\n\t") or not url.isprintable():
        raise HttpError("URL contains whitespace or control characters")
    host = parts.hostname
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = host.encode("idna").decode("ascii")
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError as exc:
        raise HttpError(f"bad port: {exc}") from None
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = (f"[{host}]" if ":" in host else host) + ("" if port == default else f":{port}")
    return (parts.scheme, host, port), target.encode("ascii", "strict"), host_header.encode("ascii")


class _Conn(asyncio.Protocol):
    """One connection; parses one answer at a time as bytes arrive."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.used = 0  # requests sent on it
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.keep = True
        self.length: int | None = None  # Content-Length, when given
        self.chunked = False
        self.body_read = 0
        self.got_bytes = False
        self.chunk_left = -1  # chunked: bytes left in the current chunk (+2 for its CRLF); -1 at a size line

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        w = self.waiter
        if w is not None and not w.done():
            if self.status is not None and self.length is None and not self.chunked:
                self.keep = False  # body to the close: done
                w.set_result(self.status)
            else:
                w.set_exception(_Lost(self.got_bytes, exc))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        w = self.waiter
        if w is None or w.done():
            self.closed = True  # bytes nobody asked for: the connection is not reusable
            self.transport.close()
            return
        self.buf += data
        try:
            done = self._parse()
        except HttpError as exc:
            self.keep = False
            self.transport.close()
            w.set_exception(exc)
            return
        if done:
            if not self.keep:
                self.transport.close()
            w.set_result(self.status)

    def _parse(self) -> bool:
        """Consume what is buffered; True once the answer is complete (or cut at the cap)."""
        while self.status is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise HttpError("answer headers too long")
                return False
            head, self.buf = bytes(self.buf[:end]), self.buf[end + 4:]
            self._head(head)
        if self.chunked:
            return self._chunks()
        if self.length is not None:
            take = min(len(self.buf), self.length - self.body_read)
            self.body_read += take
            del self.buf[:take]
            if self.buf:
                self.keep = False  # more than the answer: do not reuse
            return self.body_read >= self.length
        # no length: the body runs to the close; enough read is enough
        self.body_read += len(self.buf)
        self.buf.clear()
        if self.body_read > MAX_ANSWER:
            self.keep = False
            return True
        return False

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status_line = lines[0].split(b" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1.") or not status_line[1].isdigit():
            raise HttpError("malformed status line")
        status = int(status_line[1])
        if 100 <= status < 200:
            return  # interim answer (100 Continue, 103 Early Hints): the real one follows
        self.keep = status_line[0] == b"HTTP/1.1"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise HttpError("malformed header line")
            name = name.strip().lower()
            if name == b"content-length":
                value = value.strip()
                if not value.isdigit():
                    raise HttpError("bad Content-Length")
                self.length = int(value)
            elif name == b"transfer-encoding":
                self.chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                if v == b"close":
                    self.keep = False
                elif v == b"keep-alive":
                    self.keep = True
        if status in (204, 304):
            self.length, self.chunked = 0, False
        elif self.chunked:
            self.length = None
        if self.length is not None and self.length > MAX_ANSWER:
            self.keep = False  # not worth reading: the connection goes, the status stands
            self.length = 0
            self.buf.clear()
        self.status = status

    def _chunks(self) -> bool:
        while True:
            if self.chunk_left == -1:  # a size line
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > 1024:
                        raise HttpError("bad chunk size line")
                    return False
                size_text = bytes(self.buf[:end]).split(b";", 1)[0].strip()
                del self.buf[:end + 2]
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise HttpError("bad chunk size") from None
                if size == 0:
                    self.chunk_left = -2  # trailers until an empty line
                else:
                    self.chunk_left = size + 2
                    self.body_read += size
                    if self.body_read > MAX_ANSWER:
                        self.keep = False
                        return True
            elif self.chunk_left == -2:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    return False
                line_empty = end == 0
                del self.buf[:end + 2]
                if line_empty:
                    if self.buf:
                        self.keep = False
                    return True
            else:
                take = min(len(self.buf), self.chunk_left)
                del self.buf[:take]
                self.chunk_left -= take
                if self.chunk_left:
                    return False
                self.chunk_left = -1

    def request(self, data: bytes) -> asyncio.Future:
        self._reset()
        self.buf.clear()
        self.used += 1
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


class _Lost(HttpError):
    def __init__(self, got_bytes: bool, exc: BaseException | None):
        super().__init__(f"connection closed by the server{f' ({type(exc).__name__})' if exc else ''}")
        self.got_bytes = got_bytes


class HttpClient:
    """POSTs over pooled keep-alive connections. `limit`: idle connections kept, all hosts
    together (the caller bounds the requests in flight)."""

    def __init__(self, timeout_s: float, limit: int, user_agent: str, ssl_context: ssl.SSLContext | None = None,
                 egress: EgressPolicy | None = None):
        self.timeout_s = timeout_s
        self.egress = egress
        self.limit = limit
        self.user_agent = user_agent.encode()
        self._ssl = ssl_context
        self._idle: dict[tuple, deque[_Conn]] = {}
        self._idle_count = 0

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def post(self, url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
        """The answer's status; raises asyncio.TimeoutError or HttpError (or OSError)."""
        key, target, host = parse_url(url)
        head = [b"POST ", target, b" HTTP/1.1\r\nHost: ", host, b"\r\nUser-Agent: ", self.user_agent,
                b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        data = b"".join(head)
        async with asyncio.timeout(self.timeout_s):
            conn = self._take(key)
            if conn is not None:
                try:
                    return await self._exchange(key, conn, data)
                except _Lost as exc:
                    if exc.got_bytes:
                        raise
                    # the server closed an idle connection just as we reused it: a fresh one
            conn = await self._connect(key)
            return await self._exchange(key, conn, data)

    async def _exchange(self, key, conn: _Conn, data: bytes) -> int:
        try:
            status = await conn.request(data)
        except BaseException:
            conn.closed = True
            conn.transport.close()
            raise
        if conn.keep and not conn.closed:
            self._give(key, conn)
        elif not conn.closed:
            conn.closed = True
            conn.transport.close()
        return status

    async def _connect(self, key) -> _Conn:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._ssl_context() if scheme == "https" else None
        if self.egress is None:
            _, conn = await loop.create_connection(_Conn, host, port, ssl=tls, server_hostname=host if tls else None)
            return conn
        failure: OSError | None = None
        for family, _type, proto, _name, sockaddr in await self.egress.resolve_checked(host, port):
            try:
                _, conn = await loop.create_connection(_Conn, sockaddr[0], port, family=family, proto=proto, ssl=tls,
                                                       server_hostname=host if tls else None)
                return conn
            except OSError as exc:  # the next checked address, as create_connection itself would
                failure = exc
        raise failure or OSError("no address to connect to")

    def _take(self, key) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            self._idle_count -= 1
            if not conn.closed and now - conn.idle_since < IDLE_S:
                return conn
            conn.closed = True
            conn.transport.close()
        return None

    def _give(self, key, conn: _Conn) -> None:
        if self._idle_count >= self.limit:
            self._sweep()
        if self._idle_count >= self.limit:
            conn.closed = True
            conn.transport.close()
            return
        conn.idle_since = time.monotonic()
        conn.waiter = None
        self._idle.setdefault(key, deque()).append(conn)
        self._idle_count += 1

    def _sweep(self) -> None:
        """Drop idle connections the servers closed or that sat too long."""
        now = time.monotonic()
        for key in list(self._idle):
            keep = deque()
            for conn in self._idle[key]:
                if conn.closed or now - conn.idle_since >= IDLE_S:
                    conn.closed = True
                    conn.transport.close()
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._idle_count = sum(len(d) for d in self._idle.values())

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.closed = True
                conn.transport.close()
        self._idle.clear()
        self._idle_count = 0


def describe(exc: BaseException) -> str:
    """A failed exchange as stored with the delivery (at most 300 characters): the kind of
    failure, never an address the host resolved to."""
    if isinstance(exc, EgressRefused):
        return str(exc)  # egress_forbidden: <kind of address>
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(exc, HttpError):
        return f"{type(exc).__name__}: {exc}"[:300]
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or type(exc).__name__}"[:300]
    if isinstance(exc, socket.gaierror):
        return "dns: the host name does not resolve"
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
        return f"{type(exc).__name__}{f' ({name})' if name else ''}"
    return type(exc).__name__

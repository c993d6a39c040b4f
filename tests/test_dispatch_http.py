"""The webhook sender's own HTTP/1.1 client (services/dispatch/http.py) against a real local
server on a socket that answers in the ways real clients' servers do: Content-Length and
chunked bodies, a body to the close, interim 1xx answers, `Connection: close`, an oversized
answer, a server that closes an idle keep-alive connection, one that never answers, and
HTTPS with a certificate the client trusts."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.dispatch.http import MAX_ANSWER, HttpClient, HttpError, parse_url

HEADERS = [(b"Content-Type", b"application/cloudevents+json"), (b"X-Timestamp", b"1")]


class Server:
    """Reads one request at a time per connection and writes the canned answer of its path;
    records each request (path, headers, body) and how many connections were opened."""

    ANSWERS = {
        "/len": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        "/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
        "/chunked": b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
        "/interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
        "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        "/http10": b"HTTP/1.0 200 OK\r\n\r\nto the end",
        "/gone": b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n",
        "/error": b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        "/big": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER * 4) + b"x" * (MAX_ANSWER * 4),
        "/bigchunks": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + (b"%x\r\n" % 10000 + b"y" * 10000 + b"\r\n") * 10 + b"0\r\n\r\n",
        "/garbage": b"SMTP ready\r\n\r\n",
        "/redirect": b"HTTP/1.1 302 Found\r\nLocation: /len\r\nContent-Length: 0\r\n\r\n",
    }

    def __init__(self):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append((path, headers, body))
                if path == "/hang":
                    await asyncio.sleep(30)
                if path == "/drop":  # closes at once without answering
                    break
                writer.write(self.ANSWERS[path.split("?")[0]])
                await writer.drain()
                if path in ("/close", "/http10", "/big"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_idle(self) -> None:
        """The server side of every open connection closes (an idle keep-alive timing out)."""
        for w in self.writers:
            w.close()


async def serve(ssl_ctx=None):
    server = Server()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, srv, srv.sockets[0].getsockname()[1]


def test_answers_statuses_bodies_and_reuse():
    async def go():
        server, srv, port = await serve()
        http = HttpClient(5, limit=10, user_agent="govmedia-dispatch/1")
        base = f"http://127.0.0.1:{port}"
        try:
            assert await http.post(f"{base}/len?a=1", HEADERS, b'{"x":1}') == 200
            path, headers, body = server.requests[0]
            assert path == "/len?a=1" and body == b'{"x":1}'
            assert headers["host"] == f"127.0.0.1:{port}" and headers["content-length"] == "7"
            assert headers["content-type"] == "application/cloudevents+json" and headers["x-timestamp"] == "1"
            assert headers["user-agent"] == "govmedia-dispatch/1"
            for path, status in (("/empty", 204), ("/chunked", 201), ("/interim", 202), ("/gone", 410),
                                 ("/error", 503), ("/redirect", 302), ("/len", 200)):
                assert await http.post(f"{base}{path}", HEADERS, b"{}") == status, path
            assert server.connections == 1  # every one of those on the same keep-alive connection
            # the server ends the connection: the status stands, the next request opens a new one
            assert await http.post(f"{base}/close", HEADERS, b"{}") == 200
            assert await http.post(f"{base}/http10", HEADERS, b"{}") == 200
            assert await http.post(f"{base}/big", HEADERS, b"{}") == 200  # not read past the cap
            assert await http.post(f"{base}/bigchunks", HEADERS, b"{}") == 200  # cut at the cap
            assert await http.post(f"{base}/len", HEADERS, b"{}") == 200
            assert server.connections == 5
            # an idle connection the server closed is replaced, the request goes through
            server.drop_idle()
            await asyncio.sleep(0.1)
            assert await http.post(f"{base}/len", HEADERS, b"{}") == 200
            assert server.connections == 6
            with pytest.raises(HttpError):
                await http.post(f"{base}/garbage", HEADERS, b"{}")
            with pytest.raises(HttpError):  # closed without a word, on a fresh connection
                await http.post(f"{base}/drop", HEADERS, b"{}")
        finally:
            await http.close()
            srv.close()
    asyncio.run(go())


def test_timeout_refused_and_bad_urls():
    async def go():
        server, srv, port = await serve()
        http = HttpClient(0.5, limit=10, user_agent="t")
        try:
            with pytest.raises(asyncio.TimeoutError):
                await http.post(f"http://127.0.0.1:{port}/hang", HEADERS, b"{}")
            srv.close()
            await srv.wait_closed()
            with pytest.raises(OSError):
                await http.post(f"http://127.0.0.1:{port}/len", HEADERS, b"{}")
            for url in ("ftp://example.com/x", "http:///nohost", "http://a b.example/x", "http://h.example/a\r\nX: 1"):
                with pytest.raises(HttpError):
                    await http.post(url, HEADERS, b"{}")
        finally:
            await http.close()
    asyncio.run(go())


def test_url_parsing():
    assert parse_url("https://例子.中国/hook") == (("https", "xn--fsqu00a.xn--fiqs8s", 443), b"/hook",
                                                  b"xn--fsqu00a.xn--fiqs8s")
    assert parse_url("http://[::1]:8080") == (("http", "::1", 8080), b"/", b"[::1]:8080")
    assert parse_url("http://h.example:80/p?q=1") == (("http", "h.example", 80), b"/p?q=1", b"h.example")


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_verifies_the_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def go():
        server, srv, port = await serve(server_ctx)
        trusting = HttpClient(5, limit=10, user_agent="t", ssl_context=ssl.create_default_context(cafile=str(cert)))
        default = HttpClient(5, limit=10, user_agent="t")  # the system's CAs: this certificate is not among them
        try:
            assert await trusting.post(f"https://localhost:{port}/len", HEADERS, b"{}") == 200
            assert await trusting.post(f"https://localhost:{port}/chunked", HEADERS, b"{}") == 201
            assert server.connections == 1
            with pytest.raises(ssl.SSLCertVerificationError):
                await default.post(f"https://localhost:{port}/len", HEADERS, b"{}")
        finally:
            await trusting.close()
            await default.close()
            srv.close()
    asyncio.run(go())

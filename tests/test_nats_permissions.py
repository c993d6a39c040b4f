"""Each service's own NATS user (govmedia_kit/nats_estate.py), enforced by nats-server in
operator mode: a service publishes only its own events (only content can publish
`item.retracted`), cannot delete or purge a stream, and nobody connects without a user.
The whole flow on such a server is tests/test_e2e.py."""
from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import StreamConfig

from govmedia_cli.stack import NatsServer
from govmedia_kit.config import SERVICES
from govmedia_kit.nats_estate import Estate


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("secure-nats")
    estate = Estate.ensure(base / "estate")
    server = NatsServer.start(base / "nats", estate=estate)
    yield server
    server.stop()


async def _connect(server, user: str | None, errors: list):
    async def on_error(exc):
        errors.append(str(exc))
    options = {"user_credentials": str(server.estate.creds(user))} if user else {}
    return await nats.connect(server.url, error_cb=on_error, allow_reconnect=False, **options)


async def _published(server, user: str, subject: str) -> bool:
    """Whether `user` got a message onto `subject` (seen by the admin user)."""
    errors: list = []
    admin, nc = await _connect(server, "admin", []), await _connect(server, user, errors)
    try:
        sub = await admin.subscribe(subject)
        await admin.flush()
        await nc.publish(subject, b"x")
        await nc.flush()
        try:
            await sub.next_msg(timeout=1)
            return True
        except nats.errors.TimeoutError:
            assert any("permissions violation" in e.lower() for e in errors), errors
            return False
    finally:
        await nc.close()
        await admin.close()


def test_a_service_publishes_only_its_own_events(secure_server):
    assert asyncio.run(_published(secure_server, "content", "govmedia.content.item.retracted"))
    for service in SERVICES:
        if service != "content":
            assert not asyncio.run(_published(secure_server, service, "govmedia.content.item.retracted")), service
    assert asyncio.run(_published(secure_server, "review", "govmedia.review.item.approved"))
    assert not asyncio.run(_published(secure_server, "dispatch", "govmedia.review.item.approved"))
    # Nor may a service speak for matrix clients: they live in another NATS account.
    assert not asyncio.run(_published(secure_server, "dispatch", "govmedia.client.x.events"))


def test_a_service_cannot_delete_or_purge_a_stream(secure_server):
    async def go():
        admin = await _connect(secure_server, "admin", [])
        await admin.jetstream().add_stream(StreamConfig(name="GOVMEDIA_CONTENT", subjects=["govmedia.content.>"]))
        nc = await _connect(secure_server, "review", [])
        try:
            js = nc.jetstream(timeout=2)
            for attempt in (js.delete_stream("GOVMEDIA_CONTENT"), js.purge_stream("GOVMEDIA_CONTENT")):
                with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error)):
                    await attempt
            assert (await admin.jetstream().stream_info("GOVMEDIA_CONTENT")).config.name == "GOVMEDIA_CONTENT"
        finally:
            await nc.close()
            await admin.close()
    asyncio.run(go())


def test_nobody_connects_without_a_user(secure_server):
    async def go():
        with pytest.raises(Exception, match="Authorization Violation"):
            await _connect(secure_server, None, [])
    asyncio.run(go())

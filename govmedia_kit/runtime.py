"""Starting and stopping one service process: database and migrations, NATS and the
streams, the outbox relay, the consumers, background workers, gRPC and REST.

Each service describes itself as a `ServiceSpec`; `serve(spec)` runs it in the
foreground and, on SIGTERM or Ctrl-C, stops taking requests, finishes what is in
hand, drains NATS and closes the database.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, AsyncIterator, Awaitable, Callable

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from sqlalchemy import MetaData
from sqlmodel.ext.asyncio.session import AsyncSession

from . import telemetry
from .auth import TokenVerifier
from .bus import Bus, Consumer, ConsumerRunner, StreamPolicy
from .collector import tune_gc
from .config import ServiceSettings
from .db import Database
from .grpc import build_server, set_serving
from .guard import BodyRule, RequestGuard
from .http import create_app, install_idempotency
from .logs import setup_logging
from .outbox import KitTables, Outbox

log = logging.getLogger(__name__)


@dataclass
class ServiceSpec:
    name: str
    metadata: MetaData
    tables: KitTables
    migrations_dir: Path
    routers: list[APIRouter] = field(default_factory=list)
    # Each adds a servicer to the gRPC server: add(runtime, server).
    grpc_adders: list[Callable] = field(default_factory=list)
    grpc_service_names: list[str] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    # Long-running tasks of the service: task(runtime, stop_event).
    workers: list[Callable[["Runtime", asyncio.Event], Awaitable[None]]] = field(default_factory=list)
    # Runs once after migrations, before anything is served.
    on_start: Callable[["Runtime"], Awaitable[None]] | None = None
    # Paths whose request bodies may be larger than 1 MiB or of other types (uploads).
    body_rules: list[BodyRule] = field(default_factory=list)
    # gRPC server options, e.g. ("grpc.server_max_unrequested_time_in_server", 600).
    grpc_options: list[tuple[str, object]] = field(default_factory=list)


class Runtime:
    """What a running service hands to its transports and use cases."""

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings):
        self.spec = spec
        self.settings = settings
        self.db = Database(settings.resolved_database_url())
        self.outbox = Outbox(spec.tables, spec.name)
        if settings.production and not settings.nats_creds:
            log.warning("NATS_CREDS is not set: in production each service should connect as its own NATS "
                        "user, allowed only its own subjects (README, \"NATS: accounts and credentials\")")
        self.bus = Bus(settings.nats_url, f"govmedia-{spec.name}",
                       StreamPolicy(settings.nats_stream_replicas, settings.nats_stream_max_age_days,
                                    settings.nats_dlq_max_age_days), creds=settings.nats_creds)
        self.verifier = TokenVerifier.for_settings(settings)
        self.stop_event = asyncio.Event()
        self.state: dict = {}  # what a service keeps for its process (e.g. the account service's key ring)
        self.tracing = False
        self.app: FastAPI | None = None
        self.grpc_port = 0
        self._tasks: list[asyncio.Task] = []
        self._grpc = None
        self._health = None

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction for a use case; the outbox relay is woken after the commit."""
        async with self.db.transaction() as session:
            yield session
        self.outbox.wake()

    async def ready(self) -> dict[str, bool]:
        return {"database": await self.db.ping(), "nats": self.bus.connected}

    def build_app(self) -> FastAPI:
        app = create_app(self.spec.name, ready=self.ready)
        app.state.runtime = self
        app.state.verifier = self.verifier
        install_idempotency(app, self.db, self.spec.tables)
        app.add_middleware(RequestGuard, rules=self.spec.body_rules)  # outermost: before anything reads the body
        for router in self.spec.routers:
            app.include_router(router)
        if self.tracing:
            telemetry.instrument_fastapi(app)
        self.app = app
        return app

    async def start(self) -> None:
        """Everything but the REST server (which `serve` or a test runs around this)."""
        self.tracing = telemetry.setup_tracing(self.spec.name) or self.tracing
        await self.db.migrate(self.spec.migrations_dir)
        if self.spec.on_start:
            await self.spec.on_start(self)
        interceptors = telemetry.grpc_server_interceptors() if self.tracing else []
        self._grpc, self._health, self.grpc_port = build_server(
            self.settings.grpc_port,
            [lambda server, add=add: add(self, server) for add in self.spec.grpc_adders],
            self.spec.grpc_service_names,
            interceptors=interceptors,
            options=self.spec.grpc_options,
            host="127.0.0.1" if self.settings.http_host in ("127.0.0.1", "localhost") else "[::]",
        )
        await self._grpc.start()
        await set_serving(self._health, self.spec.grpc_service_names, True)
        self._spawn(self._connect_bus())
        from .housekeeping import housekeeping  # it builds on this module

        for worker in [*self.spec.workers, housekeeping]:
            self._spawn(worker(self, self.stop_event))
        log.info("%s: gRPC on %d", self.spec.name, self.grpc_port)

    async def _connect_bus(self) -> None:
        await self.bus.connect(self.stop_event)
        if self.stop_event.is_set():
            return
        self._spawn(self.outbox.run_relay(self.db, self.bus, self.stop_event))
        for consumer in self.spec.consumers:
            runner = ConsumerRunner(self, self.spec.tables.inbox, consumer, self.settings.max_deliver,
                                    self.settings.ack_wait_s)
            self._spawn(runner.run(self.stop_event))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        self.stop_event.set()
        if self._health:
            await set_serving(self._health, self.spec.grpc_service_names, False)
        if self._grpc:
            await self._grpc.stop(grace=3)
        # Workers and consumers see stop_event and finish the batch in hand.
        done, pending = await asyncio.wait(self._tasks, timeout=5) if self._tasks else (set(), set())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.bus.drain()
        await self.db.dispose()
        telemetry.shutdown_tracing()


async def periodically(job: Callable[[], Awaitable[object]], interval_s: float, stop: asyncio.Event, what: str,
                       *, wake: asyncio.Event | None = None, run_first: bool = True) -> None:
    """Run `job` every `interval_s` until `stop` (and at once when `wake` is set); a failing
    round is logged and the next one comes as usual, so a database blip never ends the task."""
    if not run_first and await wait_any((stop, wake), interval_s):
        return
    while not stop.is_set():
        if wake is not None:
            wake.clear()
        try:
            await job()
        except Exception:
            log.exception("%s failed; will retry", what)
        if await wait_any((stop, wake), interval_s):
            return


async def wait_any(events, timeout: float) -> bool:
    """Wait until one of `events` (None entries ignored) is set or `timeout` passes;
    answers whether the first of them (by convention the stop event) is set."""
    events = [e for e in events if e is not None]
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    return events[0].is_set()


def _log_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task crashed", exc_info=task.exception())


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class _Server(uvicorn.Server):
    """uvicorn that tells the runtime when shutdown begins, so long-lived responses (feeds)
    and workers wind down at once instead of holding the process."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime):
        super().__init__(config)
        self.runtime = runtime

    def handle_exit(self, sig, frame) -> None:
        self.runtime.stop_event.set()
        super().handle_exit(sig, frame)


async def serve_async(spec: ServiceSpec, settings: ServiceSettings) -> None:
    runtime = Runtime(spec, settings)
    await runtime.start()
    app = runtime.build_app()
    tune_gc(settings.gc_threshold)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_config=None,
                            access_log=False, lifespan="off", timeout_graceful_shutdown=5,
                            # X-Forwarded-For is believed only from <SERVICE>_TRUSTED_PROXIES
                            # (govmedia_kit/client_address.py), never by uvicorn on its own
                            proxy_headers=False)
    server = _Server(config, runtime)
    log.info("%s: REST on http://%s:%d", spec.name, settings.http_host, settings.http_port)
    try:
        await server.serve()  # returns on SIGINT/SIGTERM (uvicorn installs the handlers)
    finally:
        await runtime.stop()
        log.info("%s: stopped", spec.name)


def serve(spec: ServiceSpec, settings: ServiceSettings) -> None:
    """The entry point of every service's `python -m services.<name>`."""
    setup_logging(settings.log_level, spec.name)
    # A SIGTERM during start-up stops the process like Ctrl-C; uvicorn takes over once serving.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(serve_async(spec, settings))
    except KeyboardInterrupt:
        pass

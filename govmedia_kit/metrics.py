"""Metrics through OpenTelemetry, exposed for Prometheus at `GET /metrics` on the REST port.

One meter provider per process, read by the OpenTelemetry Prometheus exporter into a
registry of its own; `render()` is the text exposition format. What is measured:

- REST (every service, `RequestMetrics`): `govmedia_http_requests_total{method, route, status}`,
  `govmedia_http_server_errors_total{method, route}` (5xx), `govmedia_http_request_duration_seconds{method, route}`.
  `route` is the route template (`/v1/drafts/{draft_id}`), never the raw path; a path no route
  matches is `unmatched`.
- gRPC (every service, `GrpcMetricsInterceptor`): `govmedia_grpc_server_handled_total{grpc_service,
  grpc_method, grpc_code}`, `govmedia_grpc_server_handling_seconds{grpc_service, grpc_method}` (unary calls).
- The kit's queues, observed at each scrape (`refresh_runtime`): `govmedia_outbox_backlog`
  (events not yet published), `govmedia_outbox_oldest_age_seconds`, and per durable consumer
  `govmedia_consumer_pending_messages{durable, stream}` (not yet delivered: the lag),
  `govmedia_consumer_ack_pending_messages{durable, stream}`, `govmedia_consumer_redelivered_messages{durable, stream}`;
  `govmedia_nats_connected`.
- The process: `process_*` (CPU, resident memory, open files), `python_gc_collections_total{generation}`,
  `govmedia_gc_pause_seconds_total{generation}` (time the process stood still in the cyclic
  collector) and `govmedia_gc_frozen_objects` (start-up's objects, exempt: collector.tune_gc).
- A service's own gauges (services/<name>/instruments.py) through `CachedGauges` and `refresher`.

Labels carry route templates, method names, states and durable names only: nothing about a
person, no ids of users, no secrets. Observable-gauge callbacks never touch the database or
the network: they answer values an async task computed before (the scrape handler, or a
periodic task), so a scrape never blocks the event loop.
"""
from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How often the services' own gauges (instruments.py) are recomputed; tests shorten it.
REFRESH_ENV = "GOVMEDIA_METRICS_REFRESH_S"
DEFAULT_REFRESH_S = 15.0
# The kit's gauges are recomputed at a scrape unless the previous one is younger than this.
SCRAPE_MIN_INTERVAL_S = 1.0
SCRAPE_TIMEOUT_S = 3.0

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
UNMATCHED = "unmatched"


class _Metrics:
    """The process's meter provider, its Prometheus registry and the kit's instruments."""

    def __init__(self, service: str):
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector

        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, resident memory, open fds
        GCCollector(registry=self.registry)  # python_gc_collections_total{generation}
        self.registry.register(_GcPauses())
        reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        buckets = ExplicitBucketHistogramAggregation(_DURATION_BUCKETS)
        self.provider = MeterProvider(
            metric_readers=[reader],
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"govmedia-{service}")}),
            views=[View(instrument_name="govmedia_http_request_duration", aggregation=buckets),
                   View(instrument_name="govmedia_grpc_server_handling", aggregation=buckets)],
        )
        self.meter = self.provider.get_meter("govmedia")
        m = self.meter
        self.http_requests = m.create_counter("govmedia_http_requests", unit="{request}",
                                              description="REST requests answered, per route template and status")
        self.http_errors = m.create_counter("govmedia_http_server_errors", unit="{request}",
                                            description="REST requests answered with a 5xx status")
        self.http_duration = m.create_histogram("govmedia_http_request_duration", unit="s",
                                                description="REST request duration until the answer was sent")
        self.grpc_handled = m.create_counter("govmedia_grpc_server_handled", unit="{call}",
                                             description="gRPC calls completed, per method and status code")
        self.grpc_duration = m.create_histogram("govmedia_grpc_server_handling", unit="s",
                                                description="gRPC unary call duration")
        self.kit = CachedGauges(m)
        self.kit.gauge("govmedia_outbox_backlog", "Events in the outbox not yet published", "{event}")
        self.kit.gauge("govmedia_outbox_oldest_age", "Age of the oldest event not yet published (0: none)", "s")
        self.kit.gauge("govmedia_consumer_pending_messages",
                       "Messages of a durable consumer's subject not yet delivered to it (consumer lag)")
        self.kit.gauge("govmedia_consumer_ack_pending_messages",
                       "Messages delivered to a durable consumer and not yet acknowledged")
        self.kit.gauge("govmedia_consumer_redelivered_messages",
                       "Messages of a durable consumer delivered more than once and still unacknowledged")
        self.kit.gauge("govmedia_nats_connected", "1 while the process is connected to NATS")


class _GcPauses:
    """How long the cyclic collector held the process, per generation: every stream and
    request of the process waits meanwhile (a Prometheus collector, read at each scrape)."""

    def __init__(self):
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._started

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pauses = CounterMetricFamily("govmedia_gc_pause_seconds", "Time spent in the cyclic garbage collector",
                                     labels=["generation"])
        for generation, seconds in enumerate(self.seconds):
            pauses.add_metric([str(generation)], seconds)
        yield pauses
        yield GaugeMetricFamily("govmedia_gc_frozen_objects",
                                "Objects frozen after start-up, never walked by the collector", value=gc.get_freeze_count())


_state: _Metrics | None = None
_state_lock = threading.Lock()


def setup(service: str) -> _Metrics:
    """The process's metrics (made once; the first service name wins)."""
    global _state
    with _state_lock:
        if _state is None:
            _state = _Metrics(service)
        return _state


def state() -> _Metrics:
    return _state if _state is not None else setup(_service_of_process())


def _service_of_process() -> str:
    """`python -m services.<name>` → name (for a gRPC call that comes before the REST app is built)."""
    import sys

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    parts = (getattr(spec, "name", "") or "").split(".")
    if len(parts) >= 2 and parts[0] == "services":
        return parts[1]
    return os.environ.get("GOVMEDIA_SERVICE", "govmedia")


def meter():
    """The meter for a service's own instruments."""
    return state().meter


def render() -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(state().registry)


# --- cached observable gauges ---------------------------------------------------------

class CachedGauges:
    """Observable gauges whose callbacks answer the values last `set` (by an async task)."""

    def __init__(self, meter_=None):
        self._meter = meter_
        self._values: dict[str, dict[tuple, float]] = {}
        self._made: set[str] = set()

    def gauge(self, name: str, description: str, unit: str = "") -> None:
        if name in self._made:
            return
        self._made.add(name)
        self._values.setdefault(name, {})
        from opentelemetry.metrics import Observation

        def observe(_options, name=name) -> Iterable:
            return [Observation(value, dict(attrs)) for attrs, value in list(self._values.get(name, {}).items())]

        (self._meter or meter()).create_observable_gauge(name, callbacks=[observe], unit=unit, description=description)

    def set(self, name: str, value: float, **labels: str) -> None:
        """One point of a gauge (other points of it stay)."""
        self._values.setdefault(name, {})[tuple(sorted(labels.items()))] = float(value)

    def replace(self, name: str, points: Iterable[tuple[dict, float]]) -> None:
        """All the points of a gauge at once (points not given disappear)."""
        self._values[name] = {tuple(sorted(labels.items())): float(value) for labels, value in points}

    def clear(self, name: str) -> None:
        self._values[name] = {}


def refresh_interval() -> float:
    try:
        return max(float(os.environ.get(REFRESH_ENV, DEFAULT_REFRESH_S)), 0.05)
    except ValueError:
        return DEFAULT_REFRESH_S


def refresher(job: Callable[[object], Awaitable[None]], what: str):
    """A service worker (`ServiceSpec.workers`) that runs `job(runtime)` now and then every
    GOVMEDIA_METRICS_REFRESH_S seconds (default 15); a failing round is logged and retried."""

    async def worker(rt, stop: asyncio.Event) -> None:
        from .runtime import periodically

        await periodically(lambda: job(rt), refresh_interval(), stop, what)

    worker.__name__ = f"metrics_{what.replace(' ', '_')}"
    return worker


# --- REST -------------------------------------------------------------------------------

class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by method, route template and status.
    The app factory puts it outside every other middleware of the app, so answers those give
    (413 from the guard, idempotent replays) are counted too."""

    def __init__(self, app):
        self.app = app
        self.metrics = state()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 0
        recorded = False

        async def send_wrapper(message):
            nonlocal status, recorded
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not recorded:
                # Counted before the last byte goes out: a client that has the answer finds
                # it counted in its next scrape.
                recorded = True
                self._record(scope, status or 500, time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not recorded:  # no complete answer (an error, a dropped connection)
                self._record(scope, status or 500, time.perf_counter() - start)

    def _record(self, scope, status: int, seconds: float) -> None:
        method = scope.get("method", "")
        route = route_template(scope)
        m = self.metrics
        m.http_requests.add(1, {"method": method, "route": route, "status": str(status)})
        m.http_duration.record(seconds, {"method": method, "route": route})
        if status >= 500:
            m.http_errors.add(1, {"method": method, "route": route})


def route_template(scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    # Not routed (refused by a middleware, an idempotent replay): find the route it would take.
    app = scope.get("app")
    routes = getattr(app, "routes", None) or []
    from starlette.routing import Match

    try:  # FastAPI ≥ 0.137 nests included routers: their routes with full templates
        from fastapi.routing import iter_route_contexts

        routes = list(iter_route_contexts(routes))
    except ImportError:
        pass

    partial = None
    for r in routes:
        try:
            match, _ = r.matches(scope)
        except Exception:
            continue
        if match == Match.FULL:
            return getattr(r, "path", UNMATCHED)
        if match == Match.PARTIAL and partial is None:
            partial = getattr(r, "path", None)
    return partial or UNMATCHED


async def metrics_endpoint(request: Request) -> Response:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None:
        await refresh_runtime(runtime)
    return Response(render(), media_type=CONTENT_TYPE)


# --- gRPC -------------------------------------------------------------------------------

def grpc_interceptor():
    """A grpc.aio server interceptor counting calls per method and code (and timing unary ones)."""
    import grpc

    class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
        async def intercept_service(self, continuation, details):
            handler = await continuation(details)
            if handler is None:
                return None
            return _wrap_handler(handler, details.method)

    return GrpcMetricsInterceptor()


def _wrap_handler(handler, full_method: str):
    import grpc

    service, _, method = full_method.lstrip("/").rpartition("/")
    labels = {"grpc_service": service or "unknown", "grpc_method": method or full_method}
    m = state()

    def done(context, code: str | None, start: float, timed: bool) -> None:
        if code is None:
            code = _context_code(context) or "OK"
        m.grpc_handled.add(1, {**labels, "grpc_code": code})
        if timed:
            m.grpc_duration.record(time.perf_counter() - start, labels)

    def failed(context, exc: BaseException) -> str:
        if isinstance(exc, asyncio.CancelledError):
            return "CANCELLED"
        return _context_code(context) or "UNKNOWN"

    def wrap(behavior, timed: bool):
        if behavior is None:
            return None
        if inspect.isasyncgenfunction(behavior):
            async def stream(request_or_iterator, context):
                start = time.perf_counter()
                code = None
                try:
                    async for item in behavior(request_or_iterator, context):
                        yield item
                except BaseException as exc:
                    code = failed(context, exc)
                    raise
                finally:
                    done(context, code, start, timed)
            return stream

        async def call(request_or_iterator, context):
            start = time.perf_counter()
            code = None
            try:
                return await behavior(request_or_iterator, context)
            except BaseException as exc:
                code = failed(context, exc)
                raise
            finally:
                done(context, code, start, timed)
        return call

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, True), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, False), **kw)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, False), **kw)
    return handler


def _context_code(context) -> str | None:
    try:
        code = context.code()
    except Exception:
        return None
    if code is None:
        return None
    return getattr(code, "name", None) or str(code)


# --- the kit's queues, observed at a scrape -----------------------------------------------

class _RuntimeProbe:
    def __init__(self):
        self.lock = asyncio.Lock()
        self.at = 0.0


async def refresh_runtime(runtime) -> None:
    """Recompute the outbox and consumer gauges of `runtime` (bounded in time; never raises)."""
    probe: _RuntimeProbe = runtime.state.setdefault("_metrics_probe", _RuntimeProbe())
    async with probe.lock:
        if time.monotonic() - probe.at < SCRAPE_MIN_INTERVAL_S:
            return
        try:
            await asyncio.wait_for(_refresh(runtime), SCRAPE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("metrics: the outbox or consumer figures took longer than %.0fs; kept the previous ones",
                        SCRAPE_TIMEOUT_S)
        except Exception as exc:
            log.warning("metrics: could not refresh the outbox or consumer figures: %s", type(exc).__name__)
        probe.at = time.monotonic()


async def _refresh(runtime) -> None:
    await asyncio.gather(_refresh_outbox(runtime), _refresh_consumers(runtime))


async def _refresh_outbox(runtime) -> None:
    from sqlalchemy import func, select

    from .db import as_utc

    gauges = state().kit
    table = runtime.outbox.table
    try:
        async with runtime.db.session() as s:
            row = (await s.execute(select(func.count(), func.min(table.c.created_at))
                                   .where(table.c.published_at.is_(None)))).one()
    except Exception as exc:
        log.warning("metrics: outbox not readable: %s", type(exc).__name__)
        gauges.clear("govmedia_outbox_backlog")
        gauges.clear("govmedia_outbox_oldest_age")
        return
    count, oldest = int(row[0] or 0), as_utc(row[1])
    age = max((datetime.now(timezone.utc) - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
    gauges.set("govmedia_outbox_backlog", count)
    gauges.set("govmedia_outbox_oldest_age", age)


async def _refresh_consumers(runtime) -> None:
    from .events import stream_name

    gauges = state().kit
    bus = runtime.bus
    connected = bool(getattr(bus, "connected", False))
    gauges.set("govmedia_nats_connected", 1 if connected else 0)
    names = ("govmedia_consumer_pending_messages", "govmedia_consumer_ack_pending_messages",
             "govmedia_consumer_redelivered_messages")
    if not connected or bus.js is None:
        for name in names:
            gauges.clear(name)
        return

    async def info(consumer):
        stream = stream_name(consumer.subject.split(".")[1])
        try:
            return stream, consumer.durable, await bus.js.consumer_info(stream, consumer.durable)
        except Exception:
            return stream, consumer.durable, None  # not created yet (the runner makes it on its first fetch)

    results = await asyncio.gather(*(info(c) for c in runtime.spec.consumers))
    points: dict[str, list] = {name: [] for name in names}
    for stream, durable, ci in results:
        if ci is None:
            continue
        labels = {"durable": durable, "stream": stream}
        points[names[0]].append((labels, ci.num_pending or 0))
        points[names[1]].append((labels, ci.num_ack_pending or 0))
        points[names[2]].append((labels, ci.num_redelivered or 0))
    for name in names:
        gauges.replace(name, points[name])

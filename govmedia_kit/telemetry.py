"""OpenTelemetry tracing, off unless the standard OTEL_* variables switch it on.

With OTEL_TRACES_EXPORTER=otlp (or OTEL_EXPORTER_OTLP_ENDPOINT set) spans go to an OTLP
collector over HTTP; with OTEL_TRACES_EXPORTER=console they are printed. Propagation is
W3C traceparent everywhere: REST, gRPC metadata and NATS headers.
"""
from __future__ import annotations

import logging
import os

from opentelemetry import trace

log = logging.getLogger(__name__)


def tracing_enabled() -> bool:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(exporter) or bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup_tracing(service: str, span_processor=None) -> bool:
    """Install a tracer provider for this process. `span_processor` lets tests capture spans."""
    if span_processor is None and not tracing_enabled():
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", f"govmedia-{service}")}))
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    elif os.environ.get("OTEL_TRACES_EXPORTER", "").lower() == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing on for %s", service)
    return True


# Where the instrumentation puts the request's path and query: the raw path may hold a secret
# (a citizen's tracking code, /v1/petitions/track/{tracking_code}) and the query an Open311
# `api_key`. Spans get the route template instead, as the metrics do (the span name already is).
_PATH_ATTRIBUTES = ("http.target", "url.path")
_URL_ATTRIBUTES = ("http.url", "url.full")
_QUERY_ATTRIBUTES = ("url.query",)


def scrub_http_span(span, scope) -> None:
    """`server_request_hook`: the server span's path attributes become the route template."""
    if span is None or not span.is_recording():
        return
    from .metrics import route_template

    attributes = getattr(span, "attributes", None) or {}
    route = attributes.get("http.route") or route_template(scope)
    present = set(attributes)
    for key in _PATH_ATTRIBUTES:
        if key in present or key == "http.target":
            span.set_attribute(key, route)
    for key in _URL_ATTRIBUTES:
        if key in present:
            span.set_attribute(key, route)
    for key in _QUERY_ATTRIBUTES:
        if key in present:
            span.set_attribute(key, "")


def instrument_fastapi(app) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz", server_request_hook=scrub_http_span)


def grpc_server_interceptors() -> list:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()

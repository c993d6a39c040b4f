"""One trace per push, across pauses: from the REST submit through the review decisions,
the approval event and dispatch to each client's delivery. The reviewers decide in
requests of their own and the deliveries go out from a worker loop, so the span context
where the work began is stored with the work (a W3C `traceparent` string), and what
continues it later starts its span as that context's child, linking the span it runs in
(the reviewer's request, say) so neither trace loses the other.

With tracing off there is no context to store: `current_traceparent()` is None and
`continued(None, ...)` does nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, Span, SpanKind

tracer = trace.get_tracer("govmedia.trace_context")


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextmanager
def continued(traceparent: str | None, name: str, kind: SpanKind = SpanKind.INTERNAL,
              attributes: dict | None = None) -> Iterator[Span | None]:
    """A span in the stored trace of `traceparent`, linked to the current span."""
    if not traceparent:
        yield None
        return
    here = trace.get_current_span().get_span_context()
    with tracer.start_as_current_span(name, context=propagate.extract({"traceparent": traceparent}), kind=kind,
                                      links=[Link(here)] if here.is_valid else None,
                                      attributes=attributes) as span:
        yield span

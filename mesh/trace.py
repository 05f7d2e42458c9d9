"""W3C trace context and correlation ids carried in NATS headers.

Every mesh publish carries ``traceparent`` (and ``tracestate`` when set) plus
``AF-Correlation-Id``. A handler runs inside the context extracted from the
message it handles, so whatever it sends next carries the same trace id: a
chain of agent calls is one trace. When the caller has no active span (no
OpenTelemetry SDK configured, or no span open) a fresh root trace id is minted
at the first hop, so the chain is still one trace for whoever reads the
headers downstream.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "CORRELATION_HEADER",
    "TRACEPARENT",
    "TRACESTATE",
    "extract",
    "handling",
    "inject",
    "trace_id_of",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
CORRELATION_HEADER: Final = "AF-Correlation-Id"

_propagator: Final = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("agent_factory.mesh")


def inject(headers: dict[str, str], correlation_id: str | None = None) -> None:
    """Write the current trace context (or a new root) and the correlation id."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        _propagator.inject(headers)
    else:
        trace_id = random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        headers[TRACEPARENT] = f"00-{trace_id:032x}-{span_id:016x}-01"
    if correlation_id is not None:
        headers[CORRELATION_HEADER] = correlation_id


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message was sent under (empty when it carries none)."""
    return _propagator.extract(headers or {})


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The 32-hex trace id in ``headers``, or None; for logs and tests."""
    parent = (headers or {}).get(TRACEPARENT)
    if parent is None:
        return None
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 else None


@contextmanager
def handling(headers: Mapping[str, str] | None, name: str) -> Iterator[None]:
    """Run a handler inside the trace of the message it handles.

    With an OpenTelemetry SDK installed this opens a CONSUMER span that is a
    child of the sender's span; without one it re-activates the sender's span
    context so nested sends keep its trace id.
    """
    token = otel_context.attach(extract(headers))
    try:
        with _tracer.start_as_current_span(name, kind=SpanKind.CONSUMER):
            yield
    finally:
        otel_context.detach(token)

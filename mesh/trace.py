"""W3C trace context and correlation ids carried in NATS headers.

Every mesh publish carries ``traceparent`` (and ``tracestate`` when set) plus
``AF-Correlation-Id``. A handler runs inside the context extracted from the
message it handles, so whatever it sends next carries the same trace id: a
chain of agent calls is one trace. When the caller has no active span (no
OpenTelemetry SDK configured, or no span open) a fresh root trace id is minted
at the first hop, so the chain is still one trace for whoever reads the
headers downstream.

Spans are recorded only once a process has chosen an SDK provider with
:func:`use` (the gateway does, from ``AF_TRACE_*``; docs/observability.md):
until then :func:`recording` is False and the hot paths open no span. The
labels of the run a task handler serves (:data:`run_labels`) live here too, so
a log line can name its run, agent and tenant wherever it is written.

The format is exactly what OpenTelemetry's ``TraceContextTextMapPropagator``
reads and writes; version-00 headers are parsed and written inline because
this runs twice per message on the hot path. Any other version goes through
the propagator.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Final, NamedTuple, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    Tracer,
    TracerProvider,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "CORRELATION_HEADER",
    "TRACEPARENT",
    "Entered",
    "Labels",
    "TRACESTATE",
    "RunLabels",
    "current_ids",
    "current_parent",
    "enter",
    "enter_unsampled",
    "extract",
    "handling",
    "inject",
    "leave",
    "outgoing",
    "recording",
    "run_labels",
    "sampled",
    "trace_id_of",
    "tracer",
    "use",
    "wants_span",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
CORRELATION_HEADER: Final = "AF-Correlation-Id"

_propagator: Final = TraceContextTextMapPropagator()
TRACER_NAME: Final = "agent_factory"
_tracer: Tracer = trace.get_tracer(TRACER_NAME)
_EMPTY: Final = Context()
_getrandbits = random.getrandbits
_ZERO_SPAN: Final = "0" * 16
_incoming: ContextVar[tuple[str, str | None] | None] = ContextVar("af_trace_in", default=None)


def inject(headers: dict[str, str], correlation_id: str | None = None, root_id: str | None = None) -> None:
    """Write the current trace context (or a new root) and the correlation id.

    ``root_id`` (32 random lowercase hex chars, e.g. the envelope id) becomes
    the trace id of a new root, so a trace is named after the message that
    started it; otherwise a random one is drawn.
    """
    parent, state = outgoing(root_id)
    headers[TRACEPARENT] = parent
    if state:
        headers[TRACESTATE] = state
    if correlation_id is not None:
        headers[CORRELATION_HEADER] = correlation_id


def outgoing(root_id: str | None = None, flags: str = "01") -> tuple[str, str | None]:
    """``(traceparent, tracestate)`` for a message sent now (see :func:`inject`);
    ``flags`` of a new root: ``00`` when :func:`wants_span` said no."""
    incoming = _incoming.get()
    if incoming is not None:  # inside a handler, no SDK: pass the sender's context on
        return incoming
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        parent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
        return parent, span_context.trace_state.to_header() if span_context.trace_state else None
    if root_id is not None and len(root_id) == 32 and root_id[16:] != _ZERO_SPAN:
        return f"00-{root_id}-{root_id[16:]}-{flags}", None
    trace_id = _getrandbits(128) or 1
    span_id = _getrandbits(64) or 1
    return f"00-{trace_id:032x}-{span_id:016x}-{flags}", None


def extract(headers: Mapping[str, str] | None) -> Context:
    """The trace context a message was sent under (empty when it carries none)."""
    parent = headers.get(TRACEPARENT) if headers else None
    if parent is None:
        return _EMPTY
    if len(parent) != 55 or not parent.startswith("00-"):
        return _propagator.extract(headers or {})
    try:
        trace_id = int(parent[3:35], 16)
        span_id = int(parent[36:52], 16)
        flags = int(parent[53:55], 16)
    except ValueError:
        return _EMPTY
    if not trace_id or not span_id or parent[35] != "-" or parent[52] != "-":
        return _EMPTY
    state = headers.get(TRACESTATE) if headers else None
    span_context = SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags),
        trace_state=TraceState.from_header([state]) if state else None,
    )  # fmt: skip
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)


def trace_id_of(headers: Mapping[str, str] | None) -> str | None:
    """The 32-hex trace id in ``headers``, or None; for logs and tests."""
    parent = (headers or {}).get(TRACEPARENT)
    if parent is None:
        return None
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 else None


def use(provider: TracerProvider | None, ratio: float = 1.0) -> None:
    """Record spans with ``provider`` from now on (None: stop recording), starting
    ``ratio`` of the new traces (the provider's sampler should say the same).

    Called once at a process's start by whoever chose the SDK (the gateway,
    from settings), and by tests around a test. Kept here rather than read from
    OpenTelemetry's global provider so that :func:`recording` is one global
    read on the hot path, and so a test can undo it.

    Whether a message's handler opens spans is decided here before the SDK is
    asked (:func:`sampled`): by the sender's sampled flag, or for a new trace by
    a draw at ``ratio``. So a trace that is not sampled costs no span objects at
    all, only its ``traceparent`` (flags ``00``) passed on, which keeps every
    later hop out of it too (a parent-based sampler would decide the same).
    """
    global _tracer, _sdk, _ratio
    _tracer = (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
    _sdk = provider is not None
    _ratio = ratio if provider is not None else 1.0


def recording() -> bool:
    """True when spans are worth opening (a provider was given to :func:`use`)."""
    return _sdk


def tracer() -> Tracer:
    """The tracer of the provider given to :func:`use` (a no-op one before)."""
    return _tracer


def sampled(traceparent: str | None) -> bool:
    """Should the handler of a message with this ``traceparent`` open spans? Its
    sampled flag says; without one (a new trace), a draw at the sample ratio."""
    if traceparent is None:
        return _random() < _ratio
    return traceparent[-1:] in _ODD


def wants_span() -> bool:
    """Should what starts now open a span? As :func:`sampled`, for the message being
    handled, else the current span, else a new trace."""
    incoming = _incoming.get()
    if incoming is not None:
        return incoming[0][-1:] in _ODD
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return span_context.trace_flags.sampled
    return _random() < _ratio


def enter_unsampled(headers: Mapping[str, str] | None) -> Entered:
    """Like :func:`enter` for a trace not sampled: no span, the sender's ``traceparent``
    passed on (or, for a new trace, one with the sampled flag off); pair with :func:`leave`."""
    parent = headers.get(TRACEPARENT) if headers else None
    if parent is None:
        root = f"00-{_getrandbits(128) or 1:032x}-{_getrandbits(64) or 1:016x}-00"
        return None, None, _incoming.set((root, None))
    return None, None, _incoming.set((parent, headers.get(TRACESTATE) if headers else None))


_sdk = False
_ratio = 1.0
_random = random.random
_ODD: Final = frozenset("13579bdf")  # the last hex digit of the flags: sampled


class RunLabels(Protocol):
    """The run a task handler serves, for the log lines written meanwhile (the
    worker's own task context is one: nothing is built per task to say it)."""

    @property
    def run_id(self) -> str: ...
    @property
    def agent(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def correlation_id(self) -> str | None: ...
    @property
    def attempt(self) -> int: ...


class Labels(NamedTuple):
    """:class:`RunLabels` as plain values."""

    run_id: str
    agent: str
    tenant: str
    correlation_id: str | None = None
    attempt: int = 1


run_labels: ContextVar[RunLabels | None] = ContextVar("af_run", default=None)


def current_ids() -> tuple[str, str] | None:
    """``(trace id, span id)`` in hex of what runs now (a recording span's, else the
    trace context of the message being handled), or None; for log lines."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"
    incoming = _incoming.get()
    if incoming is not None and len(incoming[0]) == 55:
        return incoming[0][3:35], incoming[0][36:52]
    return None


def current_parent() -> str | None:
    """The ``traceparent`` of what runs now (a span's, else the message being handled's),
    or None: unlike :func:`outgoing`, never a new root. For a record that should name
    what wrote it only if that is in a trace (a run's finished event)."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    incoming = _incoming.get()
    return incoming[0] if incoming is not None else None


Entered = tuple[object, object | None, "Token[tuple[str, str | None] | None] | None"]


def enter(headers: Mapping[str, str] | None, name: str) -> Entered:
    """Make the message's trace current; pair with :func:`leave`.

    With an OpenTelemetry SDK installed this opens a CONSUMER span, child of
    the sender's span. Without one nothing records spans, so the sender's
    ``traceparent`` is simply carried over to whatever the handler sends
    (same trace id, same parent), at the cost of a context variable.
    :func:`handling` is the ``with`` form.
    """
    if not _sdk:
        parent = headers.get(TRACEPARENT) if headers else None
        if parent is None:
            return None, None, None
        state = headers.get(TRACESTATE) if headers else None
        return None, None, _incoming.set((parent, state))
    if not sampled(headers.get(TRACEPARENT) if headers else None):
        return enter_unsampled(headers)
    token = otel_context.attach(extract(headers))
    span = _tracer.start_as_current_span(name, kind=SpanKind.CONSUMER)
    span.__enter__()
    return token, span, None


def leave(entered: Entered) -> None:
    token, span, incoming = entered
    if incoming is not None:
        _incoming.reset(incoming)
    if span is not None:
        span.__exit__(None, None, None)  # type: ignore[attr-defined]
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


@contextmanager
def handling(headers: Mapping[str, str] | None, name: str) -> Iterator[None]:
    """Run a block inside the trace of the message it handles."""
    entered = enter(headers, name)
    try:
        yield
    finally:
        leave(entered)

"""The spans of a task's life on the queue: its enqueue, its wait, each attempt and
the outcome write (docs/observability.md).

Only called when :func:`mesh.trace.recording` is True, so a process without a
tracer provider does none of this work. The task carries its enqueue span's
context in ``traceparent``; the worker's wait and attempt spans are that span's
children, so an API request, its enqueue and the run in another process are one
trace. With a sampler that drops the trace, the spans are non-recording and
cost a context switch each.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from contextvars import Token
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from mesh import trace
from mesh.errors import PermanentError
from mesh.limits import ResultTooLarge
from mesh.wire import protocol

if TYPE_CHECKING:
    from mesh.envelope import Envelope
    from mesh.queue.outcome import OutcomeMessage

__all__ = ["Attempt", "enqueue_span", "error_category", "outcome_span", "stamped"]

# Attribute names, shared with the API request span (gateway) and the docs.
AGENT: Final = "af.agent"
VERSION: Final = "af.version"
TENANT: Final = "af.tenant"
PRIORITY: Final = "af.priority"
RUN_ID: Final = "af.run_id"
ATTEMPT: Final = "af.attempt"
ERROR_CATEGORY: Final = "af.error.category"
CORRELATION_ID: Final = "af.correlation_id"

_NOTHING: Final = nullcontext()


@contextmanager
def enqueue_span(agent: str, tenant: str, priority: int) -> Iterator[Span]:
    """The PRODUCER span around one enqueue; current while it runs, so the task's
    ``traceparent`` (:func:`mesh.trace.outgoing`) names it as the parent."""
    attributes: dict[str, str | int] = {AGENT: agent, TENANT: tenant, PRIORITY: priority}
    with trace.tracer().start_as_current_span(
        f"enqueue {agent}", kind=SpanKind.PRODUCER, attributes=attributes
    ) as span:
        yield span


def error_category(exc: BaseException) -> str:
    """What kind of failure ``exc`` is, in a word: the sandbox's category when it gave
    one, ``timeout``, ``permanent`` (no retry helps) or ``error``."""
    category = getattr(exc, "category", None)
    if isinstance(category, str):
        return category
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, PermanentError | ResultTooLarge):
        return "permanent"
    return "error"


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


class Attempt:
    """One attempt of a task in a worker: a ``queue.wait`` span from its enqueue to
    now, then the CONSUMER span of the attempt, current until :meth:`end`."""

    __slots__ = ("_failed", "_token", "span")

    def __init__(
        self, headers: Mapping[str, str] | None, task: Envelope, agent: str, started: datetime
    ) -> None:
        parent: Context = trace.extract(headers)
        tracer = trace.tracer()
        attributes: dict[str, str | int] = {
            AGENT: agent, TENANT: task.metadata.tenant, PRIORITY: int(task.metadata.priority),
            RUN_ID: task.id,
        }  # fmt: skip
        if task.correlation_id is not None:
            attributes[CORRELATION_ID] = task.correlation_id
        enqueued = _ns(task.created_at)
        wait = tracer.start_span("queue.wait", parent, SpanKind.INTERNAL, attributes, start_time=enqueued)
        wait.end(end_time=max(_ns(started), enqueued))
        self.span = tracer.start_span(f"attempt {agent}", parent, SpanKind.CONSUMER, attributes)
        self._token: Token[Context] | None = otel_context.attach(otel_trace.set_span_in_context(self.span))
        self._failed = False

    @property
    def exemplar(self) -> dict[str, str]:
        """The attempt's trace id as a metric exemplar (OpenMetrics: beside the latency
        bucket it fell in, so a slow bucket links to a trace of it)."""
        return {"trace_id": f"{self.span.get_span_context().trace_id:032x}"}

    def started(self, attempt: int, version: str | None) -> None:
        self.span.set_attribute(ATTEMPT, attempt)
        if version is not None:
            self.span.set_attribute(VERSION, version)

    def failed(self, exc: BaseException, will_retry: bool) -> None:
        self._failed = True
        self.span.set_attribute(ERROR_CATEGORY, error_category(exc))
        self.span.set_attribute("af.retry", will_retry)
        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:500]))

    def end(self) -> None:
        if not self._failed:
            self.span.set_status(Status(StatusCode.OK))
        self.span.end()
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None


def outcome_span(attempt: Attempt | None) -> Any:
    """The span around an outcome write (the finished event or a dead letter), child of
    the attempt; a shared do-nothing context manager when not tracing."""
    if attempt is None:
        return _NOTHING
    return trace.tracer().start_as_current_span("outcome.write", kind=SpanKind.PRODUCER)


def stamped(outcome: OutcomeMessage) -> OutcomeMessage:
    """``outcome`` (a finished event built without one) naming the span current now, its
    ``outcome.write``, as its ``traceparent``: whoever reads the event (the stream
    processors) opens its span as that span's child."""
    parent = trace.current_parent()
    if parent is None:
        return outcome
    subject, data, headers = outcome
    return subject, data, protocol.with_header(headers, trace.TRACEPARENT, parent)

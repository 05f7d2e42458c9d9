"""A processor's handling of a finished event as a span of the run's trace
(:func:`streams.processors.executions.traced`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mesh import trace
from streams.processors.executions import Finished, traced
from streams.processors.metering import meter_batch
from streams.processors.pricing import configured_prices

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
NOT_SAMPLED = SAMPLED[:-2] + "00"
NOW = datetime.now(UTC).isoformat()
FINISHED = Finished.model_validate({"id": "finished-r1-0", "payload": {
    "run_id": "r1", "agent": "noop", "tenant": "acme", "status": "succeeded", "attempts": 1,
    "enqueued_at": NOW, "finished_at": NOW,
}})  # fmt: skip


def _event(traceparent: str | None) -> SimpleNamespace:
    return SimpleNamespace(headers={"traceparent": traceparent.encode()} if traceparent else {})


def test_with_tracing_off_an_event_opens_no_span_and_allocates_no_context_manager() -> None:
    assert not trace.recording()
    assert traced(_event(SAMPLED), FINISHED, "breaker") is traced(_event(None), FINISHED, "metering")


def test_a_sampled_event_is_a_consumer_span_child_of_the_span_that_wrote_it(
    spans: InMemorySpanExporter,
) -> None:
    with traced(_event(SAMPLED), FINISHED, "breaker"):
        pass
    [span] = spans.get_finished_spans()
    assert span.name == "breaker noop" and span.kind is SpanKind.CONSUMER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == SAMPLED[36:52]
    assert span.context is not None and f"{span.context.trace_id:032x}" == SAMPLED[3:35]
    assert dict(span.attributes or {}) == {
        "af.agent": "noop", "af.tenant": "acme", "af.run_id": "r1", "af.processor": "breaker"
    }  # fmt: skip


def test_an_event_without_a_sampled_trace_starts_no_trace_of_its_own(spans: InMemorySpanExporter) -> None:
    for parent in (None, NOT_SAMPLED):
        with traced(_event(parent), FINISHED, "metering"):
            pass
    assert spans.get_finished_spans() == ()


class _Usage:
    """The metering table's surface ``meter_batch`` uses."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def send_changelog(self, partition: int, key: str, value: Any) -> None:
        pass


def test_metering_prices_each_event_inside_its_span(spans: InMemorySpanExporter) -> None:
    value = json.dumps({"id": FINISHED.id, "payload": FINISHED.payload.model_dump(mode="json")}).encode()
    event = SimpleNamespace(
        value=value, headers={"traceparent": SAMPLED.encode()}, message=SimpleNamespace(offset=1, partition=0)
    )
    [record] = meter_batch(_Usage(), [event], configured_prices({}))
    [span] = spans.get_finished_spans()
    assert span.name == "metering noop" and record["run_id"] == "r1"
    assert span.parent is not None and f"{span.parent.span_id:016x}" == SAMPLED[36:52]

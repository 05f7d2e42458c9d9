"""Schema registry, trace propagation and the ack tracker, without a server."""

from __future__ import annotations

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY
from pydantic import BaseModel

from mesh import trace
from mesh.channels.acks import MESSAGES, AckTracker
from mesh.channels.errors import InvalidPayload
from mesh.channels.schemas import SchemaRegistry


class Reading(BaseModel):
    kwh: float
    meter: str


def test_registered_type_is_parsed_and_bad_payload_is_refused_with_where() -> None:
    schemas = SchemaRegistry()
    schemas.register("meter.reading", Reading)
    assert schemas.validate("meter.reading", {"kwh": "1.5", "meter": "m1"}) == Reading(kwh=1.5, meter="m1")
    with pytest.raises(InvalidPayload, match="first at kwh"):
        schemas.validate("meter.reading", {"kwh": "lots", "meter": "m1"})
    assert schemas.validate("unregistered", {"anything": 1}) == {"anything": 1}
    assert schemas.json_schemas()["meter.reading"]["required"] == ["kwh", "meter"]


def test_inject_continues_the_active_span_and_carries_the_correlation_id() -> None:
    parent = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    with otel_trace.use_span(NonRecordingSpan(parent)):
        headers: dict[str, str] = {}
        trace.inject(headers, "corr-1")
    assert headers[trace.TRACEPARENT] == f"00-{0xABC:032x}-{0xDEF:016x}-01"
    assert headers[trace.CORRELATION_HEADER] == "corr-1"


def test_inject_without_a_span_mints_a_new_root_each_time() -> None:
    first: dict[str, str] = {}
    second: dict[str, str] = {}
    trace.inject(first)
    trace.inject(second)
    assert trace.trace_id_of(first) != trace.trace_id_of(second)
    assert len(trace.trace_id_of(first) or "") == 32


def test_sends_inside_a_handler_stay_in_the_incoming_trace() -> None:
    incoming: dict[str, str] = {}
    trace.inject(incoming)
    outgoing: dict[str, str] = {}
    with trace.handling(incoming, "durable:x process"):
        trace.inject(outgoing)
    assert trace.trace_id_of(outgoing) == trace.trace_id_of(incoming)
    after: dict[str, str] = {}
    trace.inject(after)
    assert trace.trace_id_of(after) != trace.trace_id_of(incoming)


def test_tracker_counts_outcomes_and_reports_overdue_entries() -> None:
    tracker = AckTracker()
    quick = tracker.begin("durable:unit-acks", "1", timeout_s=60)
    stuck = tracker.begin("durable:unit-acks", "2", timeout_s=-1.0)  # already past due
    assert tracker.overdue() == [stuck]
    tracker.settle(quick, "ack")
    tracker.settle(quick, "nak")  # a second verdict is ignored
    assert tracker.count("durable:unit-acks", "ack") == 1
    assert tracker.count("durable:unit-acks", "nak") == 0
    assert tracker.pending() == [stuck]
    labels = {"channel": "durable:unit-acks"}
    assert REGISTRY.get_sample_value("af_mesh_pending_acks", labels) == 1
    tracker.settle(stuck, "timeout")
    assert REGISTRY.get_sample_value("af_mesh_pending_acks", labels) == 0
    assert REGISTRY.get_sample_value("af_mesh_ack_outcomes_total", labels | {"outcome": "timeout"}) == 1


def test_message_tallies_are_exported_as_a_prometheus_counter() -> None:
    labels = {"channel_type": "UNIT", "direction": "sent"}
    before = REGISTRY.get_sample_value("af_mesh_messages_total", labels) or 0.0
    MESSAGES.labels("UNIT", "sent").inc(3)
    assert REGISTRY.get_sample_value("af_mesh_messages_total", labels) == before + 3

"""Tracing's settings and its decisions, and log lines' fields (docs/observability.md)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.settings import Settings
from gateway.telemetry.logs import JsonFormatter, TextFormatter
from gateway.telemetry.tracing import exporter_for
from mesh import trace

SAMPLED = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
UNSAMPLED = "00-" + "1" * 32 + "-" + "2" * 16 + "-00"


def test_sampling_is_all_in_the_embedded_dev_mode_and_a_tenth_otherwise() -> None:
    assert Settings().sample_ratio == 1.0
    assert Settings(nats_url="nats://nats-0:4222").sample_ratio == 0.1
    assert Settings(nats_url="nats://nats-0:4222", trace_sample_ratio=0.5).sample_ratio == 0.5
    assert not Settings().log_json and Settings(nats_url="nats://n:4222").log_json
    assert Settings(log_format="json").log_json


def test_the_settings_choose_the_exporter_and_its_endpoint() -> None:
    console = exporter_for(Settings(trace_exporter="console"))
    grpc = exporter_for(Settings(trace_exporter="otlp-grpc", trace_endpoint="http://collector:4317"))
    http = exporter_for(
        Settings(trace_exporter="otlp-http", trace_endpoint="http://collector:4318/v1/traces")
    )
    assert type(console).__name__ == "ConsoleSpanExporter"
    assert type(grpc).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert type(http).__module__.startswith("opentelemetry.exporter.otlp.proto.http")
    for exporter in (console, grpc, http):
        exporter.shutdown()


def test_a_process_with_tracing_off_never_loads_the_sdk() -> None:
    code = (
        "import sys\nfrom gateway.cli import cli\nfrom gateway.settings import Settings\n"
        "from gateway.telemetry import tracing\nfrom mesh.queue.worker import TaskWorker\n"
        "with tracing(Settings(), 'p') as provider:\n    assert provider is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def recording() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.use(provider, ratio=0.0)
    try:
        yield exporter
    finally:
        trace.use(None)


def test_a_senders_sampled_flag_decides_and_a_new_trace_is_drawn_at_the_ratio(
    recording: InMemorySpanExporter,
) -> None:
    assert trace.sampled(SAMPLED) and not trace.sampled(UNSAMPLED)
    assert not any(trace.sampled(None) for _ in range(100))  # ratio 0


def test_an_unsampled_message_opens_no_span_and_passes_its_trace_on(recording: InMemorySpanExporter) -> None:
    with trace.handling({trace.TRACEPARENT: UNSAMPLED}, "x"):
        headers: dict[str, str] = {}
        trace.inject(headers)
        assert headers[trace.TRACEPARENT] == UNSAMPLED
    with trace.handling({}, "new trace, not drawn at ratio 0"):
        assert not trace.wants_span()
        assert trace.outgoing()[0].endswith("-00")
    with trace.handling({trace.TRACEPARENT: SAMPLED}, "y"):
        headers = {}
        trace.inject(headers)
    assert [s.name for s in recording.get_finished_spans()] == ["y"]
    assert headers[trace.TRACEPARENT].startswith("00-" + "1" * 32) and headers[trace.TRACEPARENT] != SAMPLED


def test_a_log_line_names_its_run_and_trace_as_json_and_as_text() -> None:
    record = logging.LogRecord("a.b", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.extra_field = 7
    token = trace.run_labels.set(trace.Labels("r" * 32, "double", "acme", "corr-1", 2))
    try:
        with trace.handling({trace.TRACEPARENT: SAMPLED}, "no sdk: passed on"):
            line = json.loads(JsonFormatter("worker-0").format(record))
            text = TextFormatter("worker-0").format(record)
    finally:
        trace.run_labels.reset(token)
    expected = {"msg": "hello world", "logger": "a.b", "level": "INFO", "process": "worker-0",
                "run_id": "r" * 32, "agent": "double", "tenant": "acme", "correlation_id": "corr-1",
                "attempt": 2, "trace_id": "1" * 32, "span_id": "2" * 16, "extra_field": 7}  # fmt: skip
    assert line | expected == line
    assert text.endswith(f"hello world  [double run={'r' * 32} tenant=acme trace={'1' * 32}]")
    assert "run_id" not in json.loads(JsonFormatter("p").format(record))

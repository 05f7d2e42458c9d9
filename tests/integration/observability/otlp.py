"""What the cross-process trace tests share: an OTLP/HTTP receiver that keeps every span
it is sent, and platform processes started with tracing pointed at it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan

from tests.helpers import terminate

Span = dict[str, Any]
CONSUMER = 5  # SpanKind in OTLP's protobuf (SPAN_KIND_CONSUMER)


class Collector:
    """An OTLP/HTTP trace receiver: every span it was sent, as a dict."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    async def receive(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append({
                        "name": s.name, "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex() or None, "attributes": attributes, "kind": s.kind,
                        "status": s.status.code, "process": resource.get("service.instance.id"),
                    })  # fmt: skip
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def from_sdk(span: ReadableSpan) -> Span:
    """An in-memory exporter's span as the :class:`Collector` keeps one."""
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent else None
    return {
        "name": span.name, "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}", "parent": parent,
        "attributes": dict(span.attributes or {}), "status": span.status.status_code.value, "process": "test",
    }  # fmt: skip


@contextmanager
def process(
    argv: list[str], nats_url: str, endpoint: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    """``python argv`` exporting its spans to ``endpoint``, sampling no trace of its own
    (it records a span only when the sender's ``traceparent`` is sampled)."""
    env = {**os.environ, "AF_NATS_URL": nats_url, "AF_DATA_DIR": str(log.parent), "AF_LOG_STREAM": "false",
           "AF_TRACE_EXPORTER": "otlp-http", "AF_TRACE_ENDPOINT": endpoint, "AF_TRACE_SAMPLE_RATIO": "0",
           "OTEL_BSP_SCHEDULE_DELAY": "50", **(env or {})}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        terminate(proc)


def one(spans: list[Span], name: str) -> Span:
    named = [s for s in spans if s["name"] == name]
    assert len(named) == 1, f"{name}: {len(named)} spans among {[s['name'] for s in spans]}"
    return named[0]

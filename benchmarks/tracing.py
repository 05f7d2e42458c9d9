"""``bench queue --trace-ratio R``: the queue bench with this process tracing as a
production one would — the SDK, a parent-based ratio sampler, a batch processor
and the OTLP/HTTP exporter — sending to a collector stub in a process of its own
(it reads each export and answers 200), so the export's encoding and I/O are paid
here as they would be, and the collector's work is not."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.settings import Settings
from gateway.telemetry.tracing import provider_for
from mesh import trace
from mesh.embedded import find_free_port

__all__ = ["CountingExporter", "traced"]

_STUB = """
import http.server, sys
class Stub(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Stub).serve_forever()
"""


@dataclass
class CountingExporter(SpanExporter):
    """The OTLP/HTTP exporter, counting what it was given."""

    inner: SpanExporter
    spans: int = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return self.inner.export(spans)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


@contextmanager
def traced(ratio: float) -> Iterator[CountingExporter]:
    """This process records spans sampled at ``ratio`` while the block runs, exported
    over OTLP/HTTP to a collector stub; yields the exporter (its span count)."""
    port = find_free_port()
    stub = subprocess.Popen([sys.executable, "-c", _STUB, str(port)])
    exporter = CountingExporter(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces"))
    provider = provider_for(Settings(trace_sample_ratio=ratio), "bench", exporter)
    trace.use(provider, ratio)
    try:
        yield exporter
    finally:
        trace.use(None)
        provider.shutdown()
        stub.terminate()
        stub.wait()

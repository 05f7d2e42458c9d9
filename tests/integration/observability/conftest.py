"""Fixtures of the observability tests: a span receiver, and this process's spans in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh import trace
from mesh.embedded import find_free_port
from tests.integration.observability.otlp import Collector


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, str]]:
    """An OTLP/HTTP receiver and its endpoint."""
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = find_free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield found, f"http://127.0.0.1:{port}/v1/traces"
    finally:
        await runner.cleanup()


@pytest.fixture
def in_memory() -> Iterator[InMemorySpanExporter]:
    """This process records every span into the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.use(provider)
    try:
        yield exporter
    finally:
        trace.use(None)
        provider.shutdown()

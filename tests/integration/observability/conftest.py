"""Fixtures of the observability tests: a span receiver (``spans``, this process's own in
memory, is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

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

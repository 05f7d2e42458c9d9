"""Fixtures of the queue tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.provision import ProvisionConfig, provision
from mesh.wire.connection import connect, jetstream


class Own:
    """A nats-server of the test's own, provisioned with the test's ``ProvisionConfig``."""

    def __init__(self, server: NatsServer, nc: Client, js: JetStreamContext) -> None:
        self.server, self.nc, self.js = server, nc, js


@pytest.fixture
async def own(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Own]:
    """For tests that change a server's limits, or act on every run it holds
    (a reaper, a maintenance service): they must not touch other tests' runs.
    Parametrize indirectly with a ``ProvisionConfig`` to change the limits."""
    cfg: ProvisionConfig = getattr(request, "param", ProvisionConfig())
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url)
    js = await jetstream(nc)
    await provision(js, cfg)
    try:
        yield Own(server, nc, js)
    finally:
        await nc.close()
        server.stop()

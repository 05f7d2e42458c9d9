"""Fixtures for the stream processor tests: a nats-server of each test's own.

Processors read every finished execution of the server from the start, and
their groups (``af-<name>``) and tables persist in it: a fresh server per test
keeps one test's events and state out of another's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.provision import provision
from mesh.wire.connection import connect, jetstream


@pytest.fixture
async def own_nc(own_nats: NatsServer) -> AsyncIterator[Client]:
    nc = await connect(own_nats.url)
    yield nc
    await nc.close()


@pytest.fixture
async def own_js(own_nc: Client) -> JetStreamContext:
    """JetStream on the test's own server, provisioned (AF_EXECUTIONS included)."""
    js = await jetstream(own_nc)
    await provision(js)
    return js

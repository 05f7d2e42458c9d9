"""Fixtures for the messaging tests: a started Mesh per test, unique channel names."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.channels.messaging import Mesh
from mesh.envelope import new_id
from mesh.provision import provision
from mesh.wire.connection import connect
from tests import helpers


@pytest.fixture
async def provisioned(js: JetStreamContext) -> JetStreamContext:
    await provision(js)
    return js


@pytest.fixture
async def mesh(nc: Client, provisioned: JetStreamContext) -> AsyncIterator[Mesh]:
    async with Mesh(nc, agent="tester") as m:
        yield m


@pytest.fixture
async def other_nc(nats_url: str) -> AsyncIterator[Client]:
    """A second connection: another process, as far as NATS can tell."""
    client = await connect(nats_url, name="pytest-other")
    yield client
    if not client.is_closed:
        await client.close()


@pytest.fixture
def unique() -> str:
    """A channel-name token no other test uses."""
    return "t" + new_id()[:12]


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    """``await eventually(check, timeout)``: poll until true, or fail the test."""
    return helpers.eventually

"""The embedded servers start, accept clients, and fail with clear errors."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from mesh.embedded import find_free_port
from mesh.errors import ConnectionFailed
from mesh.wire.connection import connect


async def test_jetstream_is_enabled_on_the_embedded_server(js: JetStreamContext) -> None:
    info = await js.account_info()
    assert info.limits is not None


async def test_connect_to_a_dead_port_fails_fast_with_a_clear_error() -> None:
    port = find_free_port()
    with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{port}"):
        await connect(f"nats://127.0.0.1:{port}", connect_timeout=0.5, initial_attempts=1)

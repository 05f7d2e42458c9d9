"""A nats-server too old for the platform is refused at connect, by name."""

from __future__ import annotations

import pytest

from mesh.errors import ConnectionFailed
from mesh.wire import connection


async def test_connect_refuses_a_server_older_than_the_platform_needs(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await connection.connect(nats_url)  # the wheel's server is new enough
    await nc.close()
    monkeypatch.setattr(connection, "MIN_SERVER_VERSION", (99, 0, 0))
    with pytest.raises(ConnectionFailed, match=rf"nats-server 2\.\d+\.\d+ at {nats_url} is too old"):
        await connection.connect(nats_url)

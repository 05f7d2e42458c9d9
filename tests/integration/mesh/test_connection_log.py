"""What a connection says when it goes away: a deliberate close is not a reconnect."""

from __future__ import annotations

import logging

import pytest

from mesh.wire import connection


async def test_a_deliberate_close_logs_closed_not_reconnecting(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.wire.connection")
    nc = await connection.connect(nats_url)
    await nc.close()
    said = [r.getMessage() for r in caplog.records if r.name == "mesh.wire.connection"]
    assert "nats connection closed" in said
    assert not any("reconnecting" in line for line in said)


async def test_a_drained_connection_logs_closed(nats_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mesh.wire.connection")
    nc = await connection.connect(nats_url)
    await nc.drain()
    said = [r.getMessage() for r in caplog.records if r.name == "mesh.wire.connection"]
    assert "nats connection closed" in said
    assert not any("reconnecting" in line for line in said)

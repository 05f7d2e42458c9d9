"""Clear errors when NATS is unreachable or JetStream is off; survival of a server restart."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
from nats.js import JetStreamContext
from streams_counter_app import build_app
from streams_helpers import eventually, publish_events
from streams_workers import running

from mesh.embedded import NatsServer, find_free_port, nats_server_binary
from mesh.errors import ConnectionFailed
from mesh.wire.connection import connect, jetstream
from streams import naming


async def test_unreachable_nats_fails_fast_with_the_url_in_the_error() -> None:
    url = f"nats://127.0.0.1:{find_free_port()}"
    app = faust.App(f"x-{uuid.uuid4().hex[:6]}", broker=url)
    start = time.monotonic()
    with pytest.raises(ConnectionFailed, match="cannot connect to NATS"):
        await app.transport.acquire()
    assert time.monotonic() - start < 10


@pytest.fixture
def nats_without_jetstream() -> Iterator[str]:
    port = find_free_port()
    proc = subprocess.Popen(
        [str(nats_server_binary()), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_jetstream_disabled_is_reported_as_such(nats_without_jetstream: str) -> None:
    app = faust.App(f"x-{uuid.uuid4().hex[:6]}", broker=nats_without_jetstream)

    async def connected() -> bool:
        try:
            await app.transport.acquire()
        except ConnectionFailed as exc:
            if "cannot connect" in str(exc):
                return False  # server still starting
            raise
        return True

    with pytest.raises(ConnectionFailed, match="JetStream is not enabled"):
        await eventually(connected, 10, "an answer from the server")


@pytest.mark.slow
async def test_worker_keeps_counting_exactly_across_a_nats_server_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        app_id = f"rs-{uuid.uuid4().hex[:6]}"
        topic = f"{app_id}-events"
        app = build_app(app_id, server.url)
        counts = app.tables["counts"]
        nc = await connect(server.url, name="test-restart")
        js: JetStreamContext = await jetstream(nc)
        try:
            async with running(app):

                async def declared() -> bool:
                    try:
                        await js.stream_info(naming.stream_name(topic, 0))
                    except Exception:
                        return False
                    return True

                await eventually(declared, 30, "topic declared")
                await publish_events(js, topic, 3_000)
                await eventually(lambda: _total_at_least(counts, 3_000), 60, "3000 counted")

                await asyncio.to_thread(server.restart)

                async def server_back() -> bool:
                    try:
                        await js.stream_info(naming.stream_name(topic, 0))
                    except Exception:
                        return False
                    return True

                await eventually(server_back, 30, "the client reconnected")
                await publish_events(js, topic, 3_000)
                await eventually(lambda: _total_at_least(counts, 6_000), 60, "6000 counted")
                assert sum(counts.data.values()) == 6_000
        finally:
            await nc.close()
    finally:
        server.stop()


async def _total_at_least(table: object, n: int) -> bool:
    return sum(table.data.values()) >= n  # type: ignore[attr-defined]

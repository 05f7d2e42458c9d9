"""`QueueMaintenance.stop()` returns in bounded time, even when a cancel is lost.

A cancel can be swallowed below us: nats-py's ``_flush_pending`` catches
``CancelledError``, and Python 3.11's ``wait_for`` (every nats-py request)
returns the reply instead of raising when the reply lands together with the
cancel. A loop that relied on one cancel then ran on, and ``stop()`` waited
for it forever (issue 19: Ctrl-C hung in the dlq-mover).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.provision import provision
from mesh.queue import maintenance
from mesh.queue.maintenance import QueueMaintenance
from mesh.wire.connection import connect, jetstream


@pytest.fixture
async def own_js(tmp_path: Path) -> AsyncIterator[tuple[Client, JetStreamContext]]:
    """A server of the test's own: the mover acts on every advisory it holds."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url)
    js = await jetstream(nc)
    await provision(js)
    try:
        yield nc, js
    finally:
        await nc.close()
        server.stop()


async def test_stop_ends_the_mover_even_if_it_swallows_the_cancel(
    own_js: tuple[Client, JetStreamContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    nc, js = own_js
    moving = asyncio.Event()
    swallowed = asyncio.Event()

    async def move_that_loses_the_cancel(js: JetStreamContext, advisory: bytes) -> str | None:
        moving.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.set()  # as nats-py's flush does; the move then finishes normally
        return None

    monkeypatch.setattr(maintenance, "move_max_delivered", move_that_loses_the_cancel)
    service = QueueMaintenance(nc, js, poll_s=0.2)
    await service.start()
    subject = names.MAX_DELIVERIES_ADVISORY.replace(">", "some-consumer")
    await js.publish(subject, json.dumps({"stream_seq": 1}).encode())
    async with asyncio.timeout(10):
        await moving.wait()

    stopping = asyncio.create_task(service.stop(timeout=5.0))
    # asyncio.wait, not a timeout around `await`: awaiting a task that ignores
    # cancels cannot itself be cancelled, and the test would hang instead of failing.
    done, _ = await asyncio.wait({stopping}, timeout=8.0)
    assert swallowed.is_set()
    assert stopping in done, "stop() still waits for a mover that lost its cancel"
    assert all(task.done() for task in service._tasks)
    assert service._mover is not None and not service._mover.running


async def test_stop_abandons_a_loop_that_never_ends_at_its_deadline(
    own_js: tuple[Client, JetStreamContext],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nc, js = own_js
    moving, release = asyncio.Event(), asyncio.Event()

    async def move_that_never_ends(js: JetStreamContext, advisory: bytes) -> str | None:
        moving.set()
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
        return None

    monkeypatch.setattr(maintenance, "move_max_delivered", move_that_never_ends)
    service = QueueMaintenance(nc, js, poll_s=0.2)
    await service.start()
    subject = names.MAX_DELIVERIES_ADVISORY.replace(">", "some-consumer")
    await js.publish(subject, json.dumps({"stream_seq": 1}).encode())
    try:
        async with asyncio.timeout(10):
            await moving.wait()
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(service.stop(timeout=1.0))
        done, _ = await asyncio.wait({stopping}, timeout=6.0)
        assert stopping in done, "stop() waited past its deadline"
        assert asyncio.get_running_loop().time() - started < 5.0
        assert "dlq-mover: consumer loop still running" in caplog.text and "abandoned" in caplog.text
    finally:
        release.set()  # let the stuck move end, so the session's loop can close

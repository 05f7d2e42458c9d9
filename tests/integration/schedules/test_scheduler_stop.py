"""`Scheduler.stop()` returns in bounded time, even when a cancel is lost below
it (nats-py's requests return the reply instead when it lands with the cancel):
it used to cancel once and wait without a bound, and `up` abandoned it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh import names
from mesh.queue.producer import TaskQueue
from mesh.schedules.scheduler import CronSchedule, Scheduler
from tests.helpers import unique


@pytest.fixture
async def silent(nc: Client) -> AsyncIterator[str]:
    """A subject with a listener that never answers: a request there blocks until its timeout."""
    subject = unique("test.silent")
    sub = await nc.subscribe(subject)
    yield subject
    await sub.unsubscribe()


class RefreshLosesACancel(Scheduler):
    """Once ``blocking``, its definitions refresh waits in a NATS request, loses
    the first cancel there, and goes on into another request."""

    def __init__(self, nc: Client, js: JetStreamContext, queue: TaskQueue, silent: str) -> None:
        super().__init__(nc, js, queue, refresh_s=0.05, idle_s=0.5)
        self.silent, self.blocking = silent, False
        self.waiting, self.lost = asyncio.Event(), asyncio.Event()

    async def refresh(self, force: bool = False) -> None:
        if not self.blocking:
            return await super().refresh(force)
        self.waiting.set()
        try:
            await self.nc.request(self.silent, b"", timeout=60)
        except asyncio.CancelledError:
            self.lost.set()  # swallowed, as when the reply comes with the cancel
        await self.nc.request(self.silent, b"", timeout=60)


async def test_stop_ends_a_refresh_that_lost_its_cancel_in_a_nats_request(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, silent: str
) -> None:
    scheduler = RefreshLosesACancel(nc, mesh_js, queue, silent)
    await scheduler.start()
    refresher = scheduler._refresher
    assert refresher is not None
    scheduler.blocking = True
    async with asyncio.timeout(10):
        await scheduler.waiting.wait()
    stopping = asyncio.create_task(scheduler.stop())
    try:
        # asyncio.wait, not a timeout around `await`: awaiting a task that ignores
        # cancels cannot itself be cancelled, and the test would hang instead of failing.
        done, _ = await asyncio.wait({stopping}, timeout=12.0)
        assert scheduler.lost.is_set()
        assert stopping in done, "stop() still waits for a refresh that lost its cancel"
        assert refresher.done(), "the refresh was left running"
    finally:
        if not stopping.done():  # the old stop: end the request it waits on
            refresher.cancel()
            await stopping


class FiringNeverEnds(Scheduler):
    """Relaying a firing never ends, whatever is cancelled, until ``release``."""

    def __init__(self, nc: Client, js: JetStreamContext, queue: TaskQueue) -> None:
        super().__init__(nc, js, queue, refresh_s=0.2, idle_s=0.5)
        self.relaying, self.release = asyncio.Event(), asyncio.Event()

    async def _on_firing(self, msg: Msg) -> None:
        self.relaying.set()
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()
        await msg.ack()


async def test_stop_leaves_a_relay_that_never_ends_behind_at_its_deadline(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = FiringNeverEnds(nc, mesh_js, queue)
    await scheduler.start()
    relay = scheduler._relay
    assert relay is not None and relay._task is not None
    name = unique("stop-test")
    firing = CronSchedule(name=name, agent="noop", cron="@hourly")
    await mesh_js.publish(names.schedule_fire_subject(name), firing.model_dump_json().encode())
    try:
        async with asyncio.timeout(10):
            await scheduler.relaying.wait()
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(scheduler.stop(timeout=2.0))
        done, _ = await asyncio.wait({stopping}, timeout=8.0)
        assert stopping in done, "stop() waited past its deadline for a busy relay"
        assert asyncio.get_running_loop().time() - started < 3.5
        assert "schedule-relay: consumer loop still running" in caplog.text and "abandoned" in caplog.text
    finally:
        scheduler.release.set()  # the stuck relay ends, and with it its loop (it is stopping)
        async with asyncio.timeout(10):
            await asyncio.wait([relay._task])

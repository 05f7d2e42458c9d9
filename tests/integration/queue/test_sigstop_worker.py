"""A worker SIGSTOPped past its ack wait, resumed after another worker finished
its task and after the 2-minute duplicate window (one second here): the
stale copy may run to its end, but it records nothing — no second outcome,
no progress on top of the final state."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.provision import ProvisionConfig, provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.wire.connection import connect, jetstream
from tests.helpers import unique

from .test_faults import Starts, finished_events, spawn_worker
from .test_worker_basics import wait_for_run


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[NatsServer, Client, JetStreamContext]]:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    nc = await connect(nats.url)
    js = await jetstream(nc)
    await provision(js, ProvisionConfig(duplicate_window_s=1.0))
    try:
        yield nats, nc, js
    finally:
        await nc.close()
        nats.stop()


async def test_a_worker_stopped_past_its_ack_wait_records_nothing_when_it_resumes(
    server: tuple[NatsServer, Client, JetStreamContext],
) -> None:
    nats, nc, js = server
    agent = unique("sigstop")
    starts = Starts()
    sub = await nc.subscribe(f"test.started.{agent}", cb=starts.on_msg)
    stalled = await spawn_worker(nc, nats.url, agent, ack_wait=2.0, conc=1)
    fresh = None
    try:
        async with TaskQueue(nc, js) as queue:
            queued = await queue.enqueue(TaskSpec(agent, {"sleep": 1.0, "progress_after": 50}))
        await starts.until(1)
        stalled.send_signal(signal.SIGSTOP)  # mid-handler: no heartbeats, no ack
        fresh = await spawn_worker(nc, nats.url, agent, ack_wait=2.0, conc=1)
        await starts.until(2)  # redelivered after the ack wait
        done = await wait_for_run(js, queued.run_id, RunStatus.SUCCEEDED, timeout=20)
        until = asyncio.get_running_loop().time() + 1.5  # past the duplicate window
        while asyncio.get_running_loop().time() < until:
            await asyncio.sleep(0.1)
        stalled.send_signal(signal.SIGCONT)
        stalled.send_signal(signal.SIGTERM)  # drains: its handler finishes, its outcome is tried
        assert await asyncio.to_thread(stalled.wait, 30) == 0
    finally:
        for proc in (stalled, fresh):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        await sub.unsubscribe()
    assert starts.seen == [(queued.run_id, 1), (queued.run_id, 2)]  # the handler did run twice
    final = await get_run(js, queued.run_id)
    assert final is not None and final.status == RunStatus.SUCCEEDED and final.progress == 100
    assert final.finished_at == done.finished_at  # the fresh worker's outcome, untouched
    assert (await finished_events(js, agent))[queued.run_id] == 1

"""Missed-tick policy across a nats-server restart (its own server, never the shared one).

Observed with nats-server 2.15: ticks that fall while the server is down are
not replayed; the server fires once right after it is back, then keeps to
the schedule. With the relay's coalescing, a schedule fires at most once to
catch up whatever was down.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.provision import provision
from mesh.queue.producer import TaskQueue
from mesh.schedules.scheduler import CronSchedule, Scheduler, add_definition
from mesh.wire.connection import connect, jetstream

from .conftest import read_tasks, task_count

DOWN_S = 4.0  # the outage being simulated: four ticks of a 1 s schedule


async def test_ticks_missed_while_nats_was_down_fire_once_then_on_schedule(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    nc = await connect(server.url, name="missed-ticks")
    try:
        js = await jetstream(nc)
        await provision(js)
        async with TaskQueue(nc, js) as queue, Scheduler(nc, js, queue, refresh_s=0.2,
                                                         idle_s=0.5):  # fmt: skip
            await add_definition(js, CronSchedule(name="tick", agent="ticker", cron="@every 1s"))
            deadline = time.monotonic() + 10
            while await task_count(js, "ticker") < 2:
                assert time.monotonic() < deadline, "the schedule never fired"
                await asyncio.sleep(0.05)

            await asyncio.to_thread(server.stop)
            await asyncio.sleep(DOWN_S)  # the outage itself, not a synchronisation
            await asyncio.to_thread(server.start)
            restarted, restarted_at = time.monotonic(), datetime.now(UTC)
            before = await _count_when_back(js)

            # Follow the count after the restart: (seconds since restart, new tasks).
            timeline: list[tuple[float, int]] = []
            last = before
            while len(timeline) == 0 or timeline[-1][1] < 3:
                assert time.monotonic() - restarted < 10, f"no catch-up/ticks: {timeline}"
                count = await task_count(js, "ticker")
                if count != last:
                    timeline.append((time.monotonic() - restarted, count - before))
                    last = count
                await asyncio.sleep(0.05)
            tasks = await read_tasks(nc, js, "ticker")
    finally:
        await nc.close()
        await asyncio.to_thread(server.stop)

    # Four ticks were missed; replaying them would show as a burst right
    # after the restart. Instead the count grows by one at a time: one
    # catch-up firing, then a tick per second.
    steps = [timeline[0][1]] + [b[1] - a[1] for a, b in pairwise(timeline)]
    assert all(step == 1 for step in steps), timeline
    assert timeline[-1][0] - timeline[0][0] >= 0.9, timeline  # two ticks at least
    keys = [t.payload["idempotency_key"] for t in tasks]
    assert len(keys) == len(set(keys)) == before + 3
    # At most the catch-up firing was enqueued before the first count after the restart.
    assert before - sum(t.created_at < restarted_at for t in tasks) <= 1


async def _count_when_back(js: JetStreamContext) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            return int(await task_count(js, "ticker"))
        except Exception:
            assert time.monotonic() < deadline, "the client did not reconnect"
            await asyncio.sleep(0.05)

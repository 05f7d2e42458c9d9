"""The bulkhead is the dispatcher's per-agent budget: however many tasks arrive,
the agent runs at most ``max_concurrent`` at once, and the rest wait in the
stream (undelivered), not in the worker's memory."""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext

from agents.contract import RunContext
from agents.resilience import Bulkhead, Resilience
from mesh import names
from mesh.queue.producer import TaskQueue, TaskSpec
from tests.helpers import eventually
from tests.integration.resilience.conftest import In, Out, Serve, make_agent

BULKHEAD, TASKS, WORKER_CONCURRENCY = 5, 200, 64


async def test_200_concurrent_submissions_run_at_most_the_bulkhead_at_once_and_the_rest_wait_in_the_stream(
    mesh_js: JetStreamContext, queue: TaskQueue, serve: Serve
) -> None:
    running, peak, done = 0, 0, 0
    release = asyncio.Event()

    async def work(input: In, ctx: RunContext) -> Out:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        try:
            await release.wait()
            await asyncio.sleep(0.002)  # the work itself, so runs overlap after the release too
        finally:
            running -= 1
        done += 1
        return Out(i=input.i)

    agent = make_agent("bulkhead", Resilience(bulkhead=Bulkhead(max_concurrent=BULKHEAD)), work)
    worker = await serve(agent, concurrency=WORKER_CONCURRENCY)
    await asyncio.gather(*(queue.enqueue(TaskSpec(agent=agent.key, input={"i": i})) for i in range(TASKS)))

    await eventually(lambda: running == BULKHEAD, 5, f"{BULKHEAD} runs started")
    lane = names.task_consumer(agent.key, 2)

    async def excess_in_the_stream() -> bool:
        info = await mesh_js.consumer_info(names.STREAM_TASKS, lane)
        return info.num_pending == TASKS - BULKHEAD and info.num_ack_pending == BULKHEAD

    await eventually(excess_in_the_stream, 5, "195 undelivered, 5 delivered")
    assert worker.in_flight == BULKHEAD
    assert sum(len(lane.source.ready) for lane in worker.lanes) == 0  # nothing buffered in memory

    release.set()
    await eventually(lambda: done == TASKS, 20, "every task ran")
    await eventually(lambda: worker.completed == TASKS, 5, "every outcome recorded")
    assert peak == BULKHEAD

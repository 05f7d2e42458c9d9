"""Anti-starvation across agents: under sustained CRITICAL load on every agent,
every agent's BACKGROUND work moves, not only one agent's (issue 18)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique

CRITICAL_PER_AGENT = 500
BACKGROUND_PER_AGENT = 20
MOVED = 5  # BACKGROUND tasks each agent must finish


@pytest.mark.parametrize("n_agents", [2, 3])
async def test_every_agents_background_work_moves_under_sustained_critical_load(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, n_agents: int
) -> None:
    agents = [unique(f"fair{i}") for i in range(n_agents)]
    done: dict[str, collections.Counter[int]] = {agent: collections.Counter() for agent in agents}
    moved: dict[str, collections.Counter[int]] = {}
    all_moved = asyncio.Event()

    async def handler(ctx: TaskContext) -> Any:
        done[ctx.agent][ctx.input["p"]] += 1
        if not all_moved.is_set() and all(c[Priority.BACKGROUND] >= MOVED for c in done.values()):
            # Taken in the handler, so no task finishes between the condition and the look.
            moved.update({agent: collections.Counter(c) for agent, c in done.items()})
            all_moved.set()

    for agent in agents:  # BACKGROUND first: it is older than all the CRITICAL work
        background = TaskSpec(agent, {"p": 4}, priority=Priority.BACKGROUND)
        critical = TaskSpec(agent, {"p": 0}, priority=Priority.CRITICAL)
        await queue.enqueue_batch([background] * BACKGROUND_PER_AGENT)
        await queue.enqueue_batch([critical] * CRITICAL_PER_AGENT)
    handlers: dict[str, tuple[AgentQueueConfig, Callable[[TaskContext], Awaitable[Any]]]] = {
        agent: (AgentQueueConfig(agent), handler) for agent in agents
    }
    worker = TaskWorker(nc, mesh_js, handlers, concurrency=1)
    await worker.start()
    try:
        await asyncio.wait_for(all_moved.wait(), 30)
    finally:
        await worker.stop(2)
    background_done = {agent: moved[agent][Priority.BACKGROUND] for agent in agents}
    critical_done = {agent: moved[agent][Priority.CRITICAL] for agent in agents}
    # Every agent's CRITICAL work was still waiting when the last agent's
    # BACKGROUND tasks had moved ...
    assert all(count < CRITICAL_PER_AGENT for count in critical_done.values()), moved
    # ... the fair sweeps were spread over the agents, not spent on one agent's
    # BACKGROUND lane while another's waited (before the fix, with two agents:
    # one agent's 20, then the other's) ...
    assert max(background_done.values()) <= 2 * MOVED, moved
    # ... and CRITICAL kept its share: nine sweeps in ten (fair_share 0.1).
    total_background, total_critical = sum(background_done.values()), sum(critical_done.values())
    assert 8 * total_background <= total_critical <= 10 * total_background, moved

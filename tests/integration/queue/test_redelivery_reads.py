"""A redelivery's reads before its handler (the stored outcome, the run record) that
JetStream answers 503 for a while (a node rejoining its cluster) are tried again, not
failed: a failed delivery counts as one more attempt of a run that never started, and
the cluster partition test saw runs of a frozen node's worker reach ``failed`` so."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from mesh.queue import worker as worker_module
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import eventually, unique


async def test_a_redelivery_whose_reads_meet_503s_runs_on_its_own_attempt(
    nc: Client, mesh_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = unique("rejoining")
    real = worker_module.stored_outcome
    unavailable = {"left": 3}  # the next 3 reads of a stored outcome: 503, as during a rejoin

    async def rejoining(js: JetStreamContext, agent_: str, run_id: str) -> Any:
        if unavailable["left"] > 0:
            unavailable["left"] -= 1
            raise ServiceUnavailableError(description="JetStream system temporarily unavailable")
        return await real(js, agent_, run_id)

    monkeypatch.setattr(worker_module, "stored_outcome", rejoining)

    async def flaky_once(ctx: TaskContext) -> dict[str, int]:
        if ctx.attempt == 1:
            raise RuntimeError("the first attempt fails")  # retried: the retry is a redelivery
        return {"attempt": ctx.attempt}

    cfg = AgentQueueConfig(agent, max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.1, priorities=(2,))
    worker = TaskWorker(nc, mesh_js, {agent: (cfg, flaky_once)}, idle_poll_s=0.2)
    await worker.start()
    try:
        async with TaskQueue(nc, mesh_js) as queue:
            run_id = (await queue.enqueue(TaskSpec(agent, {}, priority=2))).run_id

        async def finished() -> Any:
            state = await get_run(mesh_js, run_id)
            return state if state is not None and state.status.finished else None

        state = await eventually(finished, 30, "the run's outcome")
    finally:
        await worker.stop(5)
    assert unavailable["left"] == 0  # the 503s were met
    assert state.status == RunStatus.SUCCEEDED, state
    assert state.result == {"attempt": 2} and state.attempts == 2

"""On a sandboxed worker the block holds too: the guard runs the agent and its
fallback agents as confined invocations, with the same breaker and chain."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import Registry
from agents.runtime import worker_for
from agents.sandbox import Sandbox, SandboxLimits
from agents.sandboxed import sandbox_config
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunState, RunStatus
from mesh.queue.worker import TaskWorker
from tests.integration.resilience.conftest import finished
from tests.integration.resilience.sandboxed_agents import Backup, Flaky


@pytest.fixture
async def sandboxed(nc: Client, mesh_js: JetStreamContext) -> AsyncIterator[TaskWorker]:
    agents = [Flaky(), Backup()]
    config = sandbox_config(
        agents, sys_path=[os.getcwd()], limits=SandboxLimits(timeout_s=10, grace_s=0.5), slots=2
    )
    worker = worker_for(nc, mesh_js, Registry(agents), [Flaky.key], idle_poll_s=0.2, sandbox=Sandbox(config))
    await worker.start()
    yield worker
    await worker.stop(drain_timeout=2.0)


async def _run(js: JetStreamContext, queue: TaskQueue, i: int) -> RunState:
    queued = await queue.enqueue(TaskSpec(agent=Flaky.key, input={"i": i}))
    return await finished(js, queued.run_id, timeout=20)


def _hops(state: RunState) -> list[tuple[str, bool]]:
    chain: dict[str, Any] = state.result["_fallback"]
    return [(h["hop"], h["answered"]) for h in chain["hops"]]


async def test_a_sandboxed_agent_gets_its_fallback_chain_and_breaker(
    sandboxed: TaskWorker, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    first = await _run(mesh_js, queue, -1)
    assert first.status == RunStatus.SUCCEEDED and first.result["by"] == "backup"
    assert _hops(first) == [("primary", False), ("secondary", True)]
    assert first.audit is not None  # the answering invocation's cost, measured by the sandbox

    second = await _run(mesh_js, queue, -2)
    assert second.status == RunStatus.SUCCEEDED and second.result["by"] == "default"
    assert _hops(second) == [("primary", False), ("secondary", False), ("default", True)]
    assert "no backup for -2" in second.result["_fallback"]["hops"][1]["error"]

    # 2 of 2 calls failed: the breaker is open, the primary is not invoked at all.
    third = await _run(mesh_js, queue, 7)
    assert third.status == RunStatus.SUCCEEDED and third.result["by"] == "backup"
    assert third.result["_fallback"]["hops"][0]["error"].startswith("BreakerOpen:")

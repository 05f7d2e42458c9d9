"""The task metrics of runs through a real queue carry the run's agent, version,
tenant and priority, and a finished run its one outcome (mesh/queue/metrics.py)."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from mesh.envelope import Priority
from mesh.queue.cancel import cancel_run
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus
from mesh.queue.worker import AgentQueueConfig, PermanentError, TaskContext, TaskWorker
from tests.helpers import unique

from .test_worker_basics import wait_for_run


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_run_is_counted_with_its_agent_version_tenant_priority_and_outcome(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("labelled")

    async def handler(ctx: TaskContext) -> Any:
        if ctx.input["fail"]:
            raise PermanentError("no")
        return {"ok": True}

    # Cancelled before any worker runs: counted by the process that cancels.
    doomed = await queue.enqueue(TaskSpec(agent, {"fail": False}, tenant="beta", priority=Priority.LOW))
    await cancel_run(nc, mesh_js, doomed.run_id)
    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, version="1.2.0"), handler)})
    await worker.start()
    try:
        ok = await queue.enqueue(TaskSpec(agent, {"fail": False}, tenant="acme", priority=Priority.HIGH))
        bad = await queue.enqueue(TaskSpec(agent, {"fail": True}, tenant="acme", priority=Priority.HIGH))
        await wait_for_run(mesh_js, ok.run_id, RunStatus.SUCCEEDED)
        await wait_for_run(mesh_js, bad.run_id, RunStatus.FAILED)
    finally:
        await worker.stop()

    acme = {"agent": agent, "tenant": "acme", "priority": "1"}
    ran = {**acme, "version": "1.2.0"}
    assert _value("af_tasks_enqueued_total", **acme) == 2
    assert _value("af_tasks_enqueued_total", agent=agent, tenant="beta", priority="3") == 1
    assert _value("af_tasks_finished_total", **ran, outcome="succeeded") == 1
    assert _value("af_tasks_finished_total", **ran, outcome="failed") == 1  # dead-lettered
    assert _value("af_task_attempts_failed_total", **ran) == 1
    cancelled = {"agent": agent, "version": "", "tenant": "beta", "priority": "3", "outcome": "cancelled"}
    assert _value("af_tasks_finished_total", **cancelled) == 1
    # Both attempts are in the latency histograms, under the same labels.
    assert _value("af_task_run_seconds_count", **ran) == 2
    assert _value("af_task_wait_seconds_count", **ran) == 2

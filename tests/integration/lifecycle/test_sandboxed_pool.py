"""Pool mode with the sandbox, on a real worker and a real nats-server: each
task runs in a fresh confined child of the agent's template; its audit record
rides on the finished event; an input error is permanent, a timeout is retried."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.registry import Registry, load_agent
from agents.sandbox import Sandbox, SandboxLimits
from agents.sandboxed import sandbox_config, sandboxed_handler
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskWorker
from tests.helpers import eventually, finished_event

SPECS = ["agents.examples.noop:NoOp", "agents.examples.fuel_combustion:FuelCombustion",
         "tests.integration.lifecycle.dedicated_agents:Sleepy",
         "tests.integration.lifecycle.dedicated_agents:Tokens"]  # fmt: skip


@pytest.fixture
async def sandboxed(nc: Client, mesh_js: JetStreamContext) -> AsyncIterator[TaskWorker]:
    agents = [load_agent(spec) for spec in SPECS]
    limits = SandboxLimits(timeout_s=1.0, grace_s=0.5)
    config = sandbox_config(agents, sys_path=[os.getcwd()], limits=limits, slots=4)
    async with Sandbox(config) as sandbox:
        handlers = {
            a.key: (AgentQueueConfig(a.key, max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.1,
                                     version=a.version),
                    sandboxed_handler(a, sandbox))
            for a in Registry(agents)
        }  # fmt: skip
        worker = TaskWorker(nc, mesh_js, handlers, idle_poll_s=0.2)
        await worker.start()
        yield worker
        await worker.stop()


async def test_each_task_runs_in_a_confined_child_and_its_audit_rides_on_the_event(
    sandboxed: TaskWorker, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    ok = await queue.enqueue(TaskSpec("noop", {"echo": "hi"}))
    unknown_fuel = {"fuel": "unobtainium", "quantity": 1, "unit": "L"}
    bad = await queue.enqueue(TaskSpec("fuel-combustion", unknown_fuel))
    slow = await queue.enqueue(TaskSpec("sleepy", {"i": 30}))
    done = await eventually(lambda: finished_event(mesh_js, "noop", ok.run_id), 15, "noop finished")
    assert done["status"] == "succeeded" and done["result"] == {"echo": "hi"}
    audit = done["audit"]
    assert audit["exit_status"] == 0 and audit["error"] is None and audit["network"] is False
    assert audit["agent"] == "noop" and audit["cpu_ms"] >= 0 and audit["peak_rss_bytes"] > 0

    refused = await eventually(
        lambda: finished_event(mesh_js, "fuel-combustion", bad.run_id), 15, "bad input"
    )
    assert refused["status"] == "failed" and refused["attempts"] == 1  # permanent: not retried
    assert refused["audit"]["error"] == "input_error"

    cut = await eventually(
        lambda: finished_event(mesh_js, "sleepy", slow.run_id), 20, "the slow one given up"
    )
    assert cut["status"] == "failed" and cut["attempts"] == 2  # a timeout is retried
    assert cut["audit"]["error"] == "timeout"
    assert [e["error"].split(":")[1].strip() for e in cut["errors"]] == ["timeout", "timeout"]


async def test_tokens_reported_inside_the_sandbox_ride_on_the_event_and_forged_ones_do_not(
    sandboxed: TaskWorker, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    honest = await queue.enqueue(TaskSpec("tokens", {"i": 40}))
    forging = await queue.enqueue(TaskSpec("tokens", {"i": -9}))
    done = await eventually(lambda: finished_event(mesh_js, "tokens", honest.run_id), 15, "honest finished")
    assert done["status"] == "succeeded" and done["version"] == "3.0.1"
    assert done["usage"] == [{"model": "small-model", "input_tokens": 40, "output_tokens": 2}]
    done = await eventually(lambda: finished_event(mesh_js, "tokens", forging.run_id), 15, "forging finished")
    assert done["status"] == "succeeded"  # a bad report is dropped, the run stands
    assert done["usage"] == [{"model": "small-model", "input_tokens": 9, "output_tokens": 2}]

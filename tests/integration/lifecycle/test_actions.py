"""Deploy, drain, retire, restart and force-stop, carried out against real
workers, a real nats-server and a real PostgreSQL: a version takes tasks
only once RUNNING, a drain under load loses nothing and runs nothing twice,
a drain that does not finish in time hands what runs back to the queue."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.lifecycle.actions import Action, Operator
from agents.lifecycle.manager import LifecycleManager
from agents.lifecycle.states import State
from agents.registry import Registry
from agents.runtime import worker_for
from mesh.queue.gates import read_gates
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from tests.helpers import eventually, unique


class In(BaseModel):
    i: int = 0
    hold: bool = False  # wait until the test releases it


class Out(BaseModel):
    i: int


def _agent_class(
    key: str, *, version: str = "1.0.0", warm: Any = None, warm_s: float = 5.0
) -> type[Agent[In, Out]]:
    """An agent with its own key; ``runs`` records every start; ``release`` lets held runs end."""

    class Slow(Agent[In, Out]):
        Input, Output = In, Out
        runs: ClassVar[list[tuple[int, int]]] = []  # (i, attempt)
        release: ClassVar[asyncio.Event]
        warm_up_timeout_s = warm_s

        async def run(self, input: In, ctx: RunContext) -> Out:
            type(self).runs.append((input.i, ctx.attempt))
            if input.hold:
                await type(self).release.wait()
            else:
                await asyncio.sleep(0.02)
            return Out(i=input.i)

        async def warm_up(self) -> None:
            if warm is not None:
                await warm()

    Slow.key, Slow.version, Slow.release = key, version, asyncio.Event()
    return Slow


async def _setup(
    nc: Client, js: JetStreamContext, pool: asyncpg.Pool, cls: type[Agent[In, Out]], **worker: Any
) -> tuple[Operator, Any]:
    registry = Registry([cls()])
    operator = Operator(LifecycleManager(pool, js, holder="ops"), nc, js, registry, poll_s=0.05)
    w = worker_for(nc, js, registry, idle_poll_s=0.2, **worker)
    return operator, w


async def test_a_version_takes_tasks_only_once_deployed_to_running(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, queue: TaskQueue
) -> None:
    cls = _agent_class(unique("deploy"))
    operator, worker = await _setup(nc, mesh_js, pool, cls)
    await operator.manager.register(cls.key, "1.0.0")
    await operator.manager.sync_gate(cls.key)  # CREATED: closed
    await worker.start()
    try:
        runs = [await queue.enqueue(TaskSpec(cls.key, {"i": i})) for i in range(5)]
        await asyncio.sleep(0.6)  # three idle sweeps of the worker (0.2 s): it must take nothing
        assert cls.runs == []
        out = await operator.run(cls.key, Action.DEPLOY, actor="alice")
        assert out.state == State.RUNNING and out.detail == "running: workers take its tasks"
        assert [t.to_state for t in out.transitions] == [
            State.VALIDATING, State.VALIDATED, State.DEPLOYING, State.WARMING_UP, State.RUNNING,
        ]  # fmt: skip
        await eventually(lambda: len(cls.runs) == 5, 10, "the waiting tasks run once it is RUNNING")
        again = await operator.run(cls.key, Action.DEPLOY, actor="alice")
        assert again.transitions == [] and again.detail == "already running"
    finally:
        await worker.stop()
    for queued in runs:
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.SUCCEEDED


async def test_a_failing_or_slow_warm_up_fails_the_version_with_the_reason(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    async def broken() -> None:
        raise RuntimeError("model file missing")

    async def slow() -> None:
        await asyncio.sleep(30)

    for warm, warm_s, why in (
        (broken, 5.0, "warm-up failed: RuntimeError: model file missing"),
        (slow, 0.3, "warm-up did not finish within 0.3 s"),
    ):
        cls = _agent_class(unique("warm"), warm=warm, warm_s=warm_s)
        operator, _ = await _setup(nc, mesh_js, pool, cls)
        out = await operator.run(cls.key, Action.DEPLOY, actor="ci")
        assert out.state == State.FAILED and out.detail == why
        assert (await operator.manager.history(cls.key, limit=1))[0].reason == f"deploy: {why}"
        gate = (await read_gates(mesh_js))[cls.key]
        assert not gate.open and gate.state == "failed"


async def test_a_version_this_process_does_not_have_fails_validation(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    cls = _agent_class(unique("valid"), version="2.0.0")
    operator, _ = await _setup(nc, mesh_js, pool, cls)
    out = await operator.run(cls.key, Action.DEPLOY, actor="ci", version="1.9.0")
    assert out.state == State.FAILED
    assert out.detail == "this process has version 2.0.0, not 1.9.0"
    assert [t.to_state for t in out.transitions] == [State.VALIDATING, State.FAILED]


async def test_retiring_under_load_finishes_what_runs_and_loses_nothing(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, queue: TaskQueue
) -> None:
    cls = _agent_class(unique("load"))
    operator, worker = await _setup(nc, mesh_js, pool, cls, concurrency=4)
    await operator.run(cls.key, Action.DEPLOY, actor="ci")
    await worker.start()
    try:
        runs = await asyncio.gather(*(queue.enqueue(TaskSpec(cls.key, {"i": i})) for i in range(200)))
        await eventually(lambda: len(cls.runs) >= 20, 10, "work under way")
        out = await operator.run(cls.key, Action.RETIRE, actor="ci", drain_timeout_s=20)
        assert out.state == State.RETIRED, out.detail
        assert [t.to_state for t in out.transitions] == [State.DRAINING, State.RETIRED]
        assert out.detail == "drained: no worker holds any of its tasks" and out.held == []
        done_at_retire = len(cls.runs)
        assert done_at_retire < 200, "retired too late to test anything"
        await asyncio.sleep(0.6)  # idle sweeps: a retired agent takes nothing more
        assert len(cls.runs) == done_at_retire
        # Nothing lost: a new version takes the rest, each task exactly once.
        cls.version = "1.1.0"
        await operator.run(cls.key, Action.DEPLOY, actor="ci")
        await eventually(lambda: len(cls.runs) == 200, 30, "every task ran")
    finally:
        await worker.stop()
    assert sorted(i for i, _ in cls.runs) == list(range(200)), "a task lost or run twice"
    for queued in runs:
        state = await get_run(mesh_js, queued.run_id)
        assert state is not None and state.status == RunStatus.SUCCEEDED and state.attempts == 1


async def test_a_drain_past_its_timeout_force_stops_and_hands_back_a_run_on_its_last_attempt(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, queue: TaskQueue
) -> None:
    cls = _agent_class(unique("stuck"))
    cls.max_attempts = 1  # its only attempt: a force-stop must not spend it
    operator, worker = await _setup(nc, mesh_js, pool, cls)
    await operator.run(cls.key, Action.DEPLOY, actor="ci")
    await worker.start()
    try:
        queued = await queue.enqueue(TaskSpec(cls.key, {"i": 7, "hold": True}))
        await eventually(lambda: cls.runs == [(7, 1)], 10, "the run started")
        out = await operator.run(cls.key, Action.RESTART, actor="ci", drain_timeout_s=0.5)
        assert [t.to_state for t in out.transitions] == [
            State.DRAINING, State.FORCE_STOPPED, State.DEPLOYING, State.WARMING_UP, State.RUNNING,
        ]  # fmt: skip
        assert out.transitions[1].reason == "restart: not drained within 0.5 s"
        # Handed back at once and run again on the restarted version, as attempt 1 again.
        cls.release.set()
        await eventually(lambda: _succeeded(mesh_js, queued.run_id), 10, "it ran again")
    finally:
        cls.release.set()
        await worker.stop()
    assert cls.runs == [(7, 1), (7, 1)]


async def _succeeded(js: JetStreamContext, run_id: str) -> bool:
    state = await get_run(js, run_id)
    return state is not None and state.status == RunStatus.SUCCEEDED

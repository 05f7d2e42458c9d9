"""Health probes in a real worker (``worker_for`` attaches them) on a real
nats-server: a startup probe not yet passed and a failing readiness probe keep
the agent's tasks in the queue (this worker takes none), a passing one lets
them run; workers report their probes when asked, and the agent's health sums
them up."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.lifecycle.health import aggregate, declared
from agents.registry import Registry
from agents.runtime import worker_for
from mesh import names
from mesh.queue.gates import HeldBy, Probes, held_tasks
from mesh.queue.producer import TaskQueue, TaskSpec
from tests.helpers import eventually, unique


class In(BaseModel):
    i: int = 0


class Out(BaseModel):
    i: int


class Probed(Agent[In, Out]):
    """Its probes say what the test sets; ``runs`` records what ran."""

    Input, Output = In, Out
    probe_interval_s = 0.05
    probe_timeout_s = 0.5
    starts: ClassVar[int] = 0  # startup probe calls
    started_after: ClassVar[int] = 1  # the call from which startup passes
    ready: ClassVar[bool | str] = True  # "raise" or "hang" to fail those ways
    runs: ClassVar[list[int]] = []

    async def startup_probe(self) -> bool:
        type(self).starts += 1
        return type(self).starts >= type(self).started_after

    async def readiness_probe(self) -> bool:
        if self.ready == "raise":
            raise ConnectionError("database unreachable")
        if self.ready == "hang":
            await asyncio.sleep(30)
        return bool(self.ready)

    async def run(self, input: In, ctx: RunContext) -> Out:
        type(self).runs.append(input.i)
        return Out(i=input.i)


def _probed(**settings: Any) -> type[Probed]:
    cls = type("P", (Probed,), {"key": unique("probed"), "runs": [], "starts": 0, **settings})
    return cls


async def _waiting(js: JetStreamContext, agent: str) -> int:
    info = await js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
    return info.num_pending or 0


async def test_a_startup_probe_not_yet_passed_keeps_the_agents_tasks_in_the_queue(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    cls = _probed(started_after=10**9)  # never, until the test says so
    agent = cls()
    worker = worker_for(nc, mesh_js, Registry([agent]), idle_poll_s=0.1)
    await worker.start()
    try:
        for i in range(5):
            await queue.enqueue(TaskSpec(cls.key, {"i": i}))
        await eventually(lambda: cls.starts >= 5, 5, "the startup probe asked several times")
        assert cls.runs == [] and await _waiting(mesh_js, cls.key) == 5
        [answer] = await held_tasks(nc, cls.key)
        assert answer.probes.started is False and answer.probes.error == "startup_probe said no"
        cls.started_after = cls.starts + 1  # passes from its next call
        await eventually(lambda: len(cls.runs) == 5, 10, "its tasks run once it has started")
        [answer] = await held_tasks(nc, cls.key)
        assert answer.probes.started and answer.probes.ready and answer.probes.error is None
    finally:
        await worker.stop()


async def test_a_failing_readiness_probe_stops_intake_here_until_it_passes_again(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    cls = _probed()
    agent = cls()
    worker = worker_for(nc, mesh_js, Registry([agent]), idle_poll_s=0.1)
    await worker.start()
    try:
        await queue.enqueue(TaskSpec(cls.key, {"i": 0}))
        await eventually(lambda: cls.runs == [0], 10, "ready: it runs")
        for failure, said in (
            ("raise", "readiness_probe: ConnectionError: database unreachable"),
            ("hang", "readiness_probe did not answer within 0.5 s"),
            (False, "readiness_probe said no"),
        ):
            cls.ready = failure

            async def reported(said: str = said) -> bool:
                answers = await held_tasks(nc, cls.key)
                return bool(answers) and answers[0].probes.ready is False and answers[0].probes.error == said

            await eventually(reported, 5, f"not ready: {said}")
            await queue.enqueue(TaskSpec(cls.key, {"i": 1}))
            await eventually(lambda: _waiting(mesh_js, cls.key), 5, "the task waits in the queue")
            await asyncio.sleep(0.3)  # several sweeps (0.1 s) and probes (0.05 s): still not taken
            assert cls.runs == [0] and await _waiting(mesh_js, cls.key) == 1
            cls.ready = True
            await eventually(lambda: cls.runs == [0, 1], 10, "ready again: it runs")
            cls.runs.remove(1)
    finally:
        await worker.stop()


def test_probes_run_only_when_declared_and_health_sums_up_the_workers() -> None:
    class Plain(Agent[In, Out]):
        key, Input, Output = "plain", In, Out

        async def run(self, input: In, ctx: RunContext) -> Out:
            return Out(i=input.i)

    assert declared(Plain()) == set()
    assert declared(_probed()()) == {"startup_probe", "readiness_probe"}

    def worker(**probes: Any) -> HeldBy:
        return HeldBy(worker="w", running=0, held=0, probes=Probes(**probes))

    assert aggregate([]) == "unknown"
    assert aggregate([worker(), worker(ready=True, alive=True)]) == "ready"
    assert aggregate([worker(ready=True), worker(ready=False)]) == "degraded"
    assert aggregate([worker(ready=True, alive=False)]) == "degraded"
    assert aggregate([worker(started=False), worker(ready=False)]) == "not_ready"

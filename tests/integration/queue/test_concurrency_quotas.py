"""Fleet-wide concurrency quotas (mesh.queue.slots): never more than ``max_concurrent`` of
a scope's tasks running at once, across worker processes, through a worker killed -9
holding a slot, a run outliving its lease, and a tenant spread over several agents;
the rest wait in the queue, and waiting is never an attempt."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from mesh import names
from mesh.envelope import Priority
from mesh.provision import ProvisionConfig, provision
from mesh.queue.budgets import Quota, put_limit, remove_limit
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunState, RunStatus, get_run
from mesh.queue.slots import read_slots
from mesh.queue.worker import TaskContext, TaskWorker
from tests.helpers import eventually, fleet
from tests.integration.queue.conftest import Own

WORKER = Path(__file__).with_name("quota_worker.py")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


async def finished(js: JetStreamContext, runs: list[str], timeout: float) -> list[RunState]:
    async def states() -> list[RunState] | None:
        found = [await get_run(js, run) for run in runs]
        done = [s for s in found if s is not None and s.status == RunStatus.SUCCEEDED]
        return done if len(done) == len(runs) else None

    return await eventually(states, timeout, f"{len(runs)} runs succeeded", every=0.1)


def intervals(states: list[RunState]) -> list[tuple[float, float]]:
    return [(s.result["start"], s.result["end"]) for s in states]


@contextmanager
def workers(url: str, names: list[str], agents: list[str], ack_wait_s: float, logs: Path) -> Iterator[
    dict[str, subprocess.Popen[bytes]]
]:  # fmt: skip
    files: list[IO[bytes]] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in names:
            files.append((logs / f"{name}.log").open("wb"))
            command = [sys.executable, str(WORKER), url, name, str(ack_wait_s), *agents]
            procs[name] = subprocess.Popen(command, stdout=files[-1], stderr=subprocess.STDOUT)
        yield procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait(timeout=30)
        for file in files:
            file.close()


async def watch_ready(nc: Client) -> set[str]:
    ready: set[str] = set()

    async def on_ready(msg: Msg) -> None:
        ready.add(msg.subject.rsplit(".", 1)[1])

    await nc.subscribe("test.ready.*", cb=on_ready)
    return ready


async def enqueue(nc: Client, js: JetStreamContext, specs: list[TaskSpec]) -> list[str]:
    async with TaskQueue(nc, js) as queue:
        return [(await queue.enqueue(spec)).run_id for spec in specs]


async def test_an_agents_quota_holds_across_two_worker_processes_and_is_used_in_full(
    own: Own, tmp_path: Path
) -> None:
    await put_limit(own.js, Quota(id="slow-running", agent="slow", max_concurrent=2))
    ready = await watch_ready(own.nc)
    with workers(own.server.url, ["w1", "w2"], ["slow"], 30, tmp_path):
        await eventually(lambda: ready == {"w1", "w2"}, 30, "both worker processes ready")
        specs = [TaskSpec("slow", {"hold": 0.25}, priority=Priority.NORMAL) for _ in range(12)]
        states = await finished(own.js, await enqueue(own.nc, own.js, specs), 60)

    # Each process alone would run 4 at once (8 in all); the quota says 2 across both.
    assert most_at_once(intervals(states)) == 2
    assert {s.result["worker"] for s in states} == {"w1", "w2"}
    assert all(s.attempts == 1 for s in states), [s.attempts for s in states]
    assert await read_slots(own.js, "agent.slow") == {}  # every slot given back


async def test_a_worker_killed_holding_a_slot_frees_it_after_the_ack_wait_and_its_run_completes(
    own: Own, tmp_path: Path
) -> None:
    await put_limit(own.js, Quota(id="one-at-a-time", agent="slow", max_concurrent=1))
    ready = await watch_ready(own.nc)
    started: list[tuple[str, str]] = []

    async def on_start(msg: Msg) -> None:
        started.append((msg.subject.rsplit(".", 1)[1], msg.data.decode()))

    await own.nc.subscribe("test.started.*", cb=on_start)
    with workers(own.server.url, ["doomed"], ["slow"], 2.0, tmp_path) as procs:
        await eventually(lambda: ready == {"doomed"}, 30, "the first worker ready")
        [first] = await enqueue(own.nc, own.js, [TaskSpec("slow", {"hold": 0.1, "first_hold": 120})])
        await eventually(lambda: started == [("doomed", first)], 15, "the first run started")
        assert set(await read_slots(own.js, "agent.slow")) == {first}
        os.kill(procs["doomed"].pid, signal.SIGKILL)
        killed_at = time.time()
        procs["doomed"].wait(timeout=10)

        with workers(own.server.url, ["heir"], ["slow"], 2.0, tmp_path):
            await eventually(lambda: "heir" in ready, 30, "the second worker ready")
            [second] = await enqueue(own.nc, own.js, [TaskSpec("slow", {"hold": 0.2})])
            states = await finished(own.js, [first, second], 30)

    # Nothing ran beside the dead run's slot until its lease (the ack wait) ended.
    assert min(s.result["start"] for s in states) >= killed_at + 1.0
    assert most_at_once(intervals(states)) == 1
    by_run = {s.run_id: s for s in states}
    assert by_run[first].attempts == 2  # its first attempt died with its worker
    assert by_run[second].attempts == 1
    assert await read_slots(own.js, "agent.slow") == {}


async def test_a_run_outliving_its_lease_keeps_its_slot_through_its_workers_heartbeats(own: Own) -> None:
    """The lease is the ack wait (1.5 s here); a run of 4 s holds its slot all along."""
    await put_limit(own.js, Quota(id="one-at-a-time", agent="long", max_concurrent=1))
    ran: list[tuple[float, float]] = []

    async def work(ctx: TaskContext) -> dict[str, Any]:
        start = time.time()
        await asyncio.sleep(ctx.input["hold"])
        ran.append((start, time.time()))
        return {}

    async with served(own, {"long": work}, ack_wait_s=1.5, workers=2) as _:
        runs = await enqueue(own.nc, own.js, [TaskSpec("long", {"hold": h}) for h in (4.0, 0.1)])
        await finished(own.js, runs, 30)
    assert most_at_once(ran) == 1, ran


async def test_a_tenants_quota_spans_its_agents_while_other_tenants_flow_and_waiting_is_no_attempt(
    own: Own,
) -> None:
    await put_limit(own.js, Quota(id="acme-running", tenant="acme", max_concurrent=1))
    ran: dict[str, list[tuple[float, float]]] = {"acme": [], "other": []}
    waited_before, returned_before = waits("waited"), waits("returned")

    async def work(ctx: TaskContext) -> dict[str, Any]:
        start = time.time()
        await asyncio.sleep(ctx.input["hold"])
        ran[ctx.tenant].append((start, time.time()))
        return {}

    async with served(own, {"alpha": work, "beta": work}, ack_wait_s=30, workers=2) as _:
        acme = [TaskSpec(a, {"hold": 0.3}, tenant="acme") for a in ("alpha", "beta") for _ in range(4)]
        other = [TaskSpec(a, {"hold": 0.3}, tenant="other") for a in ("alpha", "beta") for _ in range(4)]
        acme_runs = await enqueue(own.nc, own.js, acme)
        other_runs = await enqueue(own.nc, own.js, other)
        other_states = await finished(own.js, other_runs, 30)
        other_done = time.time()
        acme_states = await finished(own.js, acme_runs, 30)

    assert most_at_once(ran["acme"]) == 1, ran["acme"]  # across both agents and both workers
    assert most_at_once(ran["other"]) > 1  # not held back by acme's quota
    # acme's 8 runs take 8 x 0.3 s one after another; the other tenant's were done well before.
    assert max(end for _, end in ran["acme"]) - other_done > 1.0
    states = acme_states + other_states
    assert all(s.attempts == 1 for s in states), [(s.attempts, s.returned) for s in states]
    # Some waited in a worker, some went back to the queue for a while: neither is an attempt.
    assert waits("waited") > waited_before and waits("returned") > returned_before
    assert await read_slots(own.js, "tenant.acme") == {}


async def test_removing_the_quota_lets_waiting_work_run_at_once(own: Own) -> None:
    await put_limit(own.js, Quota(id="slow-running", agent="gated", max_concurrent=1))
    release = asyncio.Event()
    running = 0

    async def work(ctx: TaskContext) -> dict[str, Any]:
        nonlocal running
        running += 1
        await release.wait()
        return {}

    async with served(own, {"gated": work}, ack_wait_s=30, workers=1) as _:
        runs = await enqueue(own.nc, own.js, [TaskSpec("gated", {}) for _ in range(3)])
        await eventually(lambda: running == 1, 10, "one run started")
        assert await eventually(lambda: read_slots(own.js, "agent.gated"), 5, "its slot held")
        assert running == 1
        await remove_limit(own.js, "quota", "slow-running")
        await eventually(lambda: running == 3, 10, "the other two started once the quota went")
        release.set()
        await finished(own.js, runs, 10)


def served(
    own: Own, handlers: dict[str, Any], ack_wait_s: float, workers: int
) -> AbstractAsyncContextManager[list[TaskWorker]]:
    """``workers`` TaskWorkers (concurrency 8), each on its own connection, serving ``handlers``."""
    return fleet(own.server.url, handlers, workers, idle_poll_s=0.2, concurrency=8, ack_wait_s=ack_wait_s)


def waits(outcome: str, agents: tuple[str, ...] = ("alpha", "beta")) -> float:
    """Tasks of ``agents`` that found a quota full (or its slots unreachable), in this process."""
    return sum(
        REGISTRY.get_sample_value("af_quota_slot_waits_total", {"agent": agent, "outcome": outcome}) or 0.0
        for agent in agents
    )


async def test_a_slot_left_by_a_dead_worker_frees_when_its_lease_ends_without_any_write(own: Own) -> None:
    """A worker killed after recording an outcome but before giving its slot back leaves
    a holder that no redelivery will replace: the lease's end frees it, and the agent's
    lanes, paused while full, take work again then."""
    await put_limit(own.js, Quota(id="one-at-a-time", agent="solo", max_concurrent=1))
    kv = await own.js.key_value(names.BUCKET_SLOTS)
    lease_end = time.time() + 2.0
    await kv.put("agent.solo", json.dumps({"held": {"ghost-run": ["ghost@host/1", lease_end]}}).encode())
    starts: list[float] = []

    async def work(ctx: TaskContext) -> dict[str, Any]:
        starts.append(time.time())
        return {}

    async with served(own, {"solo": work}, ack_wait_s=30, workers=1) as [worker]:
        assert all(lane.quota_room == 0 for lane in worker.lanes)  # full: nothing is pulled
        runs = await enqueue(own.nc, own.js, [TaskSpec("solo", {}) for _ in range(2)])
        await finished(own.js, runs, 15)
    assert min(starts) >= lease_end
    assert await read_slots(own.js, "agent.solo") == {}


async def test_a_limited_task_waits_while_its_slots_cannot_be_claimed_and_runs_once_they_can(
    own: Own,
) -> None:
    """af_slots gone (an operator's mistake, or its stream without a leader): limited
    work waits unstarted, never runs unlimited, and its waiting is no attempt."""
    await put_limit(own.js, Quota(id="acme-running", tenant="acme", max_concurrent=5))
    await own.js.delete_key_value(names.BUCKET_SLOTS)
    starts: dict[str, int] = {"acme": 0, "other": 0}

    async def work(ctx: TaskContext) -> dict[str, Any]:
        starts[ctx.tenant] += 1
        return {}

    waited = waits("waited", ("unslotted",))
    async with served(own, {"unslotted": work}, ack_wait_s=30, workers=1) as _:
        [limited] = await enqueue(own.nc, own.js, [TaskSpec("unslotted", {}, tenant="acme")])
        [free] = await enqueue(own.nc, own.js, [TaskSpec("unslotted", {}, tenant="other")])
        await finished(own.js, [free], 10)  # unlimited work flows meanwhile
        await eventually(lambda: waits("waited", ("unslotted",)) > waited, 10, "the limited task waiting")
        assert starts["acme"] == 0
        await provision(own.js, ProvisionConfig())  # the bucket is back
        [state] = await finished(own.js, [limited], 15)
    assert state.attempts == 1 and starts["acme"] == 1

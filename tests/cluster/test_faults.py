"""Fault test 1 of issue 21: a stream leader SIGKILLed while tasks flow, nothing lost.

Tasks are enqueued at a steady rate by a client given every node's URL and
served by two workers of the same agent, each connected to a different
ordering of the node list. While they flow, the node leading ``AF_TASKS``
(or, in the second test, ``KV_af_runs``) is SIGKILLed, and restarted once
the last task is accepted. An enqueue that fails during the election is
retried with the same idempotency key, as a real client would. Every
accepted run must then finish in KV with exactly one recorded outcome
(one finished event on ``AF_EVENTS``); handler re-runs (a worker whose ack
was lost in the election) are reported, not counted as duplicates.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.cluster import NatsCluster
from mesh.errors import IdempotencyKeyReused, InvalidTask, QueueFull
from mesh.provision import ProvisionConfig, provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually, unique

from .conftest import REPLICAS

TASKS = 300
RATE_PER_S = 100.0  # 300 tasks over ~3 s
KILL_AFTER = 80  # accepted tasks before the leader is killed
ENQUEUE_PATIENCE_S = 45.0  # how long one enqueue is retried before it counts as refused
FINISH_DEADLINE_S = 60.0
ACK_WAIT_S = 10.0  # a worker's lost ack is redelivered this soon
_NOT_RETRIED = (IdempotencyKeyReused, InvalidTask, QueueFull)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of its own: these tests kill nodes."""
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("faults")), size=REPLICAS)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
async def faulty_r3(faulty: NatsCluster) -> NatsCluster:
    nc = await connect(",".join(faulty.urls), name="pytest-faults-provision")
    js = await jetstream(nc, timeout=20)

    async def provisioned() -> bool:
        # Seen once right after start: "no suitable peers for placement, peer offline".
        try:
            await provision(js, ProvisionConfig(replicas=REPLICAS))
        except Exception:
            return False
        return True

    try:
        await eventually(provisioned, timeout=30, every=0.5, what="R3 provisioning")
    finally:
        await nc.close()
    return faulty


@dataclass
class Tally:
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key -> run id
    refused: dict[str, str] = field(default_factory=dict)  # idempotency key -> last error
    retries: Counter[str] = field(default_factory=Counter)  # error type -> enqueue retries
    runs: Counter[str] = field(default_factory=Counter)  # run id -> handler completions


@dataclass(frozen=True)
class Client3:
    nc: Client
    js: JetStreamContext


@pytest.fixture
async def connections(faulty_r3: NatsCluster) -> AsyncIterator[list[Client3]]:
    """A producer/reader with every URL, and two workers' connections, each
    with the node list in another order (so they start on different nodes)."""
    urls = faulty_r3.urls
    orders = [urls, urls[1:] + urls[:1], urls[2:] + urls[:2]]
    made: list[Client3] = []
    try:
        for i, order in enumerate(orders):
            nc = await connect(",".join(order), name=f"pytest-faults-{i}", dont_randomize=True)
            made.append(Client3(nc, await jetstream(nc, timeout=10)))
        yield made
    finally:
        for c in made:
            if not c.nc.is_closed:
                await c.nc.close()


async def test_killing_the_task_stream_leader_loses_and_doubles_nothing(
    faulty_r3: NatsCluster, connections: list[Client3]
) -> None:
    await _flow_through_a_kill(faulty_r3, connections, names.STREAM_TASKS)


@pytest.mark.slow  # ~50 s: enqueues time out while the bucket elects
async def test_killing_the_run_bucket_leader_loses_and_doubles_nothing(
    faulty_r3: NatsCluster, connections: list[Client3]
) -> None:
    await _flow_through_a_kill(faulty_r3, connections, names.kv_stream(names.BUCKET_RUNS))


async def _flow_through_a_kill(cluster: NatsCluster, conns: list[Client3], stream: str) -> None:
    started = time.monotonic()
    producer, *worker_conns = conns
    agent = unique("fault")
    tally = Tally()

    async def handler(ctx: TaskContext) -> Any:
        tally.runs[ctx.run_id] += 1
        return {"n": ctx.input["n"]}

    cfg = AgentQueueConfig(agent, ack_wait_s=ACK_WAIT_S, backoff_base_s=0.2, backoff_max_s=1.0)
    workers = [
        TaskWorker(c.nc, c.js, {agent: (cfg, handler)}, name=f"fault-worker-{i}")
        for i, c in enumerate(worker_conns)
    ]
    for worker in workers:
        await worker.start()
    leader = (await eventually(lambda: _leader(cluster, stream), timeout=20, what=f"a leader of {stream}"))[0]
    try:
        async with TaskQueue(producer.nc, producer.js) as queue:
            pending: list[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            killed = False
            for n in range(TASKS):
                # Pacing for a steady rate (not a wait for anything to happen).
                await asyncio.sleep(max(0.0, t0 + n / RATE_PER_S - loop.time()))
                if not killed and len(tally.accepted) >= KILL_AFTER:
                    cluster.kill(leader)
                    killed = True
                pending.append(asyncio.create_task(_enqueue(queue, agent, n, tally)))
            if not killed:
                cluster.kill(leader)
            await asyncio.gather(*pending)
        await asyncio.to_thread(cluster.restart, leader)
        reader = producer.js
        await eventually(
            lambda: _all_finished(reader, tally),
            timeout=FINISH_DEADLINE_S,
            every=0.5,
            what="every run finished",
        )
        events = await _finished_events(reader, agent)
    finally:
        for worker in workers:
            await worker.stop(drain_timeout=10)
        if cluster.nodes[leader].pid is None:
            await asyncio.to_thread(cluster.restart, leader)

    accepted = set(tally.accepted.values())
    finished = {run for run in accepted if events.get(run, 0) >= 1}
    lost = accepted - finished
    duplicated = {run for run, count in events.items() if count > 1}
    reruns = {run for run, count in tally.runs.items() if count > 1}
    print(
        f"\n[{stream} leader n{leader} killed] accepted={len(accepted)} finished={len(finished)} "
        f"lost={len(lost)} duplicated={len(duplicated)} | refused={len(tally.refused)} "
        f"enqueue retries={dict(tally.retries)} handler re-runs={len(reruns)} "
        f"took={time.monotonic() - started:.1f}s"
    )
    assert not tally.refused, tally.refused
    assert len(accepted) == TASKS
    assert set(events) <= accepted
    assert not lost, sorted(lost)[:5]
    assert not duplicated, {run: events[run] for run in sorted(duplicated)[:5]}


async def _enqueue(queue: TaskQueue, agent: str, n: int, tally: Tally) -> None:
    """One client request, retried with its idempotency key until it is answered."""
    key = f"{agent}-{n}"
    spec = TaskSpec(agent=agent, input={"n": n}, idempotency_key=key)
    deadline = time.monotonic() + ENQUEUE_PATIENCE_S
    while True:
        try:
            done = await queue.enqueue(spec)
        except _NOT_RETRIED:
            raise
        except Exception as exc:
            tally.retries[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                tally.refused[key] = repr(exc)
                return
            await asyncio.sleep(0.2)  # a client's retry back-off
            continue
        tally.accepted[key] = done.run_id
        return


async def _leader(cluster: NatsCluster, stream: str) -> tuple[int] | None:
    """The leader's index in a tuple (node 0 is a leader too, and falsy)."""
    leader = await asyncio.to_thread(cluster.leader_of, stream)
    return None if leader is None else (leader,)


async def _all_finished(js: JetStreamContext, tally: Tally) -> bool:
    for run_id in tally.accepted.values():
        try:
            state = await get_run(js, run_id)
        except Exception:
            return False  # the bucket is electing: ask again
        if state is None or not state.status.finished:
            return False
    return True


async def _finished_events(js: JetStreamContext, agent: str) -> dict[str, int]:
    """Finished events per run id of ``agent`` on AF_EVENTS."""
    prefix = names.finished_subject(agent, "")
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=names.finished_subject(agent, "*"))
    return {subject[len(prefix) :]: int(count) for subject, count in (info.state.subjects or {}).items()}

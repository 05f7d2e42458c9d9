"""Fault test 1 of issue 21: a stream leader SIGKILLed while tasks flow, nothing lost.

The flow of :mod:`tests.cluster.flow` (300 tasks at 100/s, two workers on
different nodes, the PostgreSQL recorder): once 80 tasks are accepted, the
node leading ``AF_TASKS`` (or, in the second test, ``KV_af_runs``) is
SIGKILLed; it is restarted once every enqueue is answered. Every accepted
run finishes once, as KV state, finished event and ``executions`` row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh import names
from mesh.cluster import NatsCluster
from tests.helpers import eventually, unique

from . import flow
from .conftest import REPLICAS

TASKS = 300
RATE_PER_S = 100.0  # 300 tasks over ~3 s
KILL_AFTER = 80  # accepted tasks before the leader is killed


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of its own: these tests kill nodes."""
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("faults")), size=REPLICAS)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
async def faulty_r3(faulty: NatsCluster) -> NatsCluster:
    return await flow.provisioned_r3(faulty)


async def test_killing_the_task_stream_leader_loses_and_doubles_nothing(
    faulty_r3: NatsCluster, database_url: str
) -> None:
    await _flow_through_a_kill(faulty_r3, database_url, names.STREAM_TASKS)


@pytest.mark.slow  # 15-20 s here: enqueues wait while the run bucket elects
async def test_killing_the_run_bucket_leader_loses_and_doubles_nothing(
    faulty_r3: NatsCluster, database_url: str
) -> None:
    await _flow_through_a_kill(faulty_r3, database_url, names.kv_stream(names.BUCKET_RUNS))


async def _flow_through_a_kill(cluster: NatsCluster, database_url: str, stream: str) -> None:
    (leader,) = await eventually(
        lambda: flow.leader(cluster, stream), timeout=20, what=f"a leader of {stream}"
    )

    async def kill(tally: flow.Tally) -> None:
        await eventually(lambda: len(tally.accepted) >= KILL_AFTER, timeout=30, what=f"{KILL_AFTER} accepted")
        cluster.kill(leader)

    async def restart() -> None:
        await asyncio.to_thread(cluster.restart, leader)

    try:
        async with (
            flow.recording(cluster, database_url) as pool,
            flow.connections(cluster, [0, 1, 2]) as (producer, *workers),
        ):
            outcome = await flow.flow_through(
                f"{stream} leader n{leader} killed", producer, workers, pool,
                agent=unique("fault"), tasks=TASKS, rate_per_s=RATE_PER_S, during=kill, after=restart,
            )  # fmt: skip
    finally:
        if cluster.nodes[leader].pid is None:
            await asyncio.to_thread(cluster.restart, leader)
    print(f"\n{outcome.line()}")
    outcome.check()

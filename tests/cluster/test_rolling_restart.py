"""Fault test 3 of issue 21: a rolling restart of all three nodes under load loses nothing.

The upgrade path: while tasks flow (:mod:`tests.cluster.flow`), each node in
turn is stopped gracefully (SIGTERM: nats-server hands off the leaderships
it holds) and started again on its store; the next goes down only once the
cluster has caught up (every stream's and consumer's leader sees each peer
current, :meth:`~mesh.cluster.NatsCluster.caught_up`) and the flow has moved
on. Every client loses its node once and reconnects to another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.cluster import NatsCluster
from tests.helpers import eventually, unique

from . import flow
from .conftest import REPLICAS

TASKS = 200
RATE_PER_S = 25.0
START_AFTER = 40  # accepted tasks before the first node goes down
PROGRESS = 20  # tasks accepted after a node is back, before the next goes down


@pytest.fixture(scope="module")
def rolling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of its own: this test restarts every node."""
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("rolling")), size=REPLICAS)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
async def rolling_r3(rolling: NatsCluster) -> NatsCluster:
    return await flow.provisioned_r3(rolling)


@pytest.mark.timeout(180)
async def test_restarting_every_node_in_turn_under_load_loses_and_doubles_nothing(
    rolling_r3: NatsCluster, database_url: str
) -> None:
    cluster = rolling_r3
    steps: list[str] = []

    async def roll(tally: flow.Tally) -> None:
        await eventually(
            lambda: len(tally.accepted) >= START_AFTER, timeout=30, what=f"{START_AFTER} accepted"
        )
        for i in range(REPLICAS):
            t0 = time.monotonic()
            await asyncio.to_thread(cluster.restart, i)  # SIGTERM, then start on the same store
            back = time.monotonic()
            await eventually(
                lambda: asyncio.to_thread(cluster.caught_up), timeout=60, every=0.2, what="caught up"
            )
            current = time.monotonic()
            base = len(tally.accepted)
            await eventually(
                lambda base=base: len(tally.accepted) >= base + PROGRESS, timeout=60, what="the flow going on"
            )
            steps.append(f"n{i} back {back - t0:.1f}s current +{current - back:.1f}s")

    async with (
        flow.recording(cluster, database_url) as pool,
        flow.connections(cluster, [0, 1, 2]) as (producer, *workers),
    ):
        outcome = await flow.flow_through(
            "rolling restart n0, n1, n2", producer, workers, pool,
            agent=unique("rolling"), tasks=TASKS, rate_per_s=RATE_PER_S, during=roll, max_tasks=5 * TASKS,
        )  # fmt: skip
    outcome.extra = f" | {'; '.join(steps)}"
    print(f"\n{outcome.line()}")
    outcome.check()

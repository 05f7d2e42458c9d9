"""Fault test 2 of issue 21: a partitioned node accepts nothing that is later lost.

The node leading ``AF_TASKS`` is frozen with SIGSTOP while tasks flow
(:mod:`tests.cluster.flow`, one worker on that node and one on another, the
producer on a third). Its peers stop hearing its Raft heartbeats (1 s) and
elect a new leader after their election timeout (4 to 9 s in nats-server
2.15's ``raft.go``), and the runs the frozen node's worker held are
redelivered to the other worker after their ack wait (the held outcomes and
acks reach the cluster only on resume: a lost ack). The routes stay up,
since nats-server pings them every 2 minutes by default and the embedded
config does not change that: this is a partition as Raft sees it, bounded by
what the test waits for (a new leader, the majority accepting tasks, a
redelivered run), not by a fixed time. A client connected only to that node
is enqueueing when it freezes: the node is frozen just as the client's first
enqueue, its key claimed, sends its task, so that task waits unanswered in
the frozen node's socket (stored only once the node resumes: an outcome the
client cannot know). Its other enqueues start during the freeze. Each
attempt must fail with the platform's own 503 (EnqueueOutcomeUnknown,
StreamUnavailable: retry), none is accepted while frozen, and after the
resume every retry (same idempotency key) is accepted and runs once: the
task stored late is the one run, not a second. The old leader comes back as
a follower; whatever it held unreplicated must not surface as accepted work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh import names
from mesh.cluster import NatsCluster
from mesh.errors import EnqueueOutcomeUnknown, StreamUnavailable
from mesh.queue.producer import TaskQueue
from mesh.wire.publisher import Reply
from tests.helpers import eventually, unique

from . import flow
from .conftest import REPLICAS

TASKS = 200
RATE_PER_S = 20.0  # slow enough that the flow spans the election
PAUSE_AFTER = 40  # accepted tasks before the leader is frozen
PROGRESS = 20  # tasks the majority must accept under its new leader before the node is resumed
WORK_S = 0.5  # each run's work: the worker on the frozen node holds tasks when it freezes
ACK_WAIT_S = 3.0  # ... and they are redelivered to the other worker while it is frozen
MINORITY_TASKS = 10
MINORITY_PATIENCE_S = 60.0
MINORITY_TIMEOUT_S = 2.0  # shorter than the pause: its requests time out while it lasts
# What a client may hear from a node cut off from its peers: the platform's own
# "may or may not be stored" or "nothing stored", each a 503 that says retry.
_UNAVAILABLE = {EnqueueOutcomeUnknown.__name__, StreamUnavailable.__name__}


@pytest.fixture(scope="module")
def partitioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A cluster of its own: this test freezes a node."""
    nodes = NatsCluster(Path(tmp_path_factory.mktemp("partition")), size=REPLICAS)
    nodes.start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
async def partitioned_r3(partitioned: NatsCluster) -> NatsCluster:
    return await flow.provisioned_r3(partitioned)


@pytest.mark.timeout(180)
async def test_a_frozen_task_stream_leader_accepts_nothing_that_is_later_lost(
    partitioned_r3: NatsCluster, database_url: str
) -> None:
    cluster = partitioned_r3
    stream = names.STREAM_TASKS
    (leader,) = await eventually(
        lambda: flow.leader(cluster, stream), timeout=20, what=f"a leader of {stream}"
    )
    first, second = (i for i in range(REPLICAS) if i != leader)
    agent = unique("partition")
    minority = flow.Tally()
    seen: dict[str, float] = {}

    async def partition(tally: flow.Tally) -> None:
        await eventually(
            lambda: len(tally.accepted) >= PAUSE_AFTER, timeout=30, what=f"{PAUSE_AFTER} accepted"
        )
        async with TaskQueue(cut_off.nc, cut_off.js) as queue:  # started while its node answers

            def freeze() -> None:
                cluster.pause(leader)
                seen["paused"] = time.monotonic()

            _freeze_before_first_task(queue, freeze)
            requests = [
                asyncio.create_task(
                    flow.enqueue(queue, agent, f"{agent}-minority-{k}", k, minority, MINORITY_PATIENCE_S)
                )
                for k in range(MINORITY_TASKS)
            ]
            await eventually(lambda: "paused" in seen, timeout=10, what="the node frozen mid-enqueue")
            (new,) = await eventually(
                lambda: flow.leader(cluster, stream, other_than=leader), timeout=30, what="a majority leader"
            )
            seen["elected"], seen["new leader"] = time.monotonic(), new
            base = len(tally.accepted)
            await eventually(
                lambda: len(tally.accepted) >= base + PROGRESS, timeout=30, what="majority progress"
            )
            # The frozen node's worker held runs whose outcomes and acks it cannot
            # deliver: they go to the other worker after the ack wait (a lost ack).
            await eventually(
                lambda: any(count > 1 for count in tally.runs.values()), timeout=30, what="a run redelivered"
            )
            seen["accepted while paused"] = len(minority.accepted)
            seen["errors while paused"] = sum(minority.retries.values())
            cluster.resume(leader)
            seen["resumed"] = time.monotonic()
            await asyncio.gather(*requests)
        tally.planned += minority.planned
        tally.accepted |= minority.accepted
        tally.accepted_at |= minority.accepted_at
        tally.refused |= minority.refused

    try:
        async with (
            flow.recording(cluster, database_url) as pool,
            flow.connections(cluster, [first, leader, second]) as (producer, *workers),
            flow.connections(cluster, [leader], only=True, timeout=MINORITY_TIMEOUT_S) as (cut_off,),
        ):
            outcome = await flow.flow_through(
                f"{stream} leader n{leader} paused", producer, workers, pool,
                agent=agent, tasks=TASKS, rate_per_s=RATE_PER_S, during=partition, max_tasks=3 * TASKS,
                work_s=WORK_S, ack_wait_s=ACK_WAIT_S,
            )  # fmt: skip
        await eventually(
            lambda: asyncio.to_thread(cluster.caught_up), timeout=30, what="the cluster caught up"
        )
    finally:
        if "paused" in seen and "resumed" not in seen:
            cluster.resume(leader)
    leader_after = cluster.leader_of(stream)
    outcome.extra = (
        f" | paused {seen['resumed'] - seen['paused']:.1f}s, new leader n{seen['new leader']} after "
        f"{seen['elected'] - seen['paused']:.1f}s, leader after resume n{leader_after}; minority: "
        f"accepted while paused={seen['accepted while paused']} "
        f"errors while paused={seen['errors while paused']} "
        f"accepted after resume={len(minority.accepted)}/{MINORITY_TASKS} errors={dict(minority.retries)}"
    )
    print(f"\n{outcome.line()}")
    outcome.check()
    assert seen["accepted while paused"] == 0
    assert set(minority.retries) <= _UNAVAILABLE, minority.retries  # each says "try again", none "refused"
    assert len(minority.accepted) == MINORITY_TASKS


def _freeze_before_first_task(queue: TaskQueue, freeze: Callable[[], None]) -> None:
    """Call ``freeze`` just before ``queue`` sends its first task: that enqueue
    has claimed its key and its task publish waits, unanswered, in the frozen
    node's socket (its outcome is unknown to the client until the node resumes)."""
    send = queue.pipeline.request
    frozen = False

    async def request(subject: str, data: bytes, headers: Any = None) -> asyncio.Future[Reply]:
        nonlocal frozen
        if subject.startswith(f"{names.TASKS_PREFIX}.") and not frozen:
            frozen = True
            freeze()
        return await send(subject, data, headers)

    queue.pipeline.request = request  # type: ignore[method-assign]

"""Workers killed with SIGKILL: no loss, no double count of committed work.

Faust on this transport is at-least-once (as on Kafka without transactions): the
events a worker processed after its last commit are processed again by the next
owner of the partition. So for a partition whose owner was killed, the exact
final count is::

    final = N_p + (K_p - committed_p)

where ``K_p`` is what the changelog held at the kill (events reflected in the
table) and ``committed_p`` the committed offset minus 1 (events committed). A
lost event makes ``final`` smaller; re-counting committed work makes it larger.
For a partition whose owner stopped gracefully (a revoke commits), ``final == N_p``.
"""

from __future__ import annotations

import base64
import json

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from nats.js import JetStreamContext
from streams_counter_app import SESSION_TIMEOUT
from streams_helpers import (
    GroupLog,
    committed_offsets,
    eventually,
    publish_events,
    read_changelog,
    topic_declared,
)
from streams_workers import WorkerProcess

from streams import naming

N = 30_000


def _sum_by_partition(changelog: dict[int, dict[str, int]]) -> dict[int, int]:
    return {p: sum(changelog.get(p, {}).values()) for p in range(4)}


async def _owned_partitions(js: JetStreamContext, app_id: str, pid: int, topic: str) -> set[int]:
    kv = await js.key_value(naming.group_bucket(app_id))
    gen = json.loads((await kv.get("assignment")).value or b"{}")
    for member, raw in gen.get("assignments", {}).items():
        if f"-{pid}-" in member:
            a = ConsumerProtocolMemberAssignment.decode(base64.b64decode(raw))
            return {p for t, ps in a.assignment if t == topic for p in ps}
    return set()


def _member_of(log: GroupLog, pid: int) -> str:
    return next(w.member for w in log.writes if w.kind == "beat" and f"-{pid}-" in w.member)


async def _members(js: JetStreamContext, app_id: str) -> int:
    try:
        kv = await js.key_value(naming.group_bucket(app_id))
        gen = json.loads((await kv.get("assignment")).value or b"{}")
    except Exception:
        return 0
    return len(gen.get("members", []))


async def _wait_all_committed(
    js: JetStreamContext, app_id: str, topic: str, per_partition: dict[int, int]
) -> None:
    async def done() -> bool:
        committed = await committed_offsets(js, app_id, topic)
        return all(committed[p] >= per_partition[p] + 1 for p in range(4))

    await eventually(done, 120, "all events committed")


@pytest.mark.slow
async def test_sigkilled_worker_restarts_with_exact_counts(
    nats_url: str, js: JetStreamContext, app_id: str, worker_processes: list[WorkerProcess], tmp_path
) -> None:
    topic, changelog = f"{app_id}-events", f"{app_id}-counts-changelog"
    worker = WorkerProcess(app_id, nats_url, tmp_path / "w1.log")
    worker_processes.append(worker)
    await eventually(lambda: topic_declared(js, topic), 30, "topic declared")
    per_partition = await publish_events(js, topic, N)

    async def midway() -> bool:
        committed = await committed_offsets(js, app_id, topic)
        return sum(c - 1 for c in committed.values()) >= N // 3

    await eventually(midway, 60, "a third of the events committed")
    worker.kill()
    at_kill = _sum_by_partition(await read_changelog(js, changelog))
    committed = {p: c - 1 for p, c in (await committed_offsets(js, app_id, topic)).items()}
    assert sum(committed.values()) < N, "killed too late to test anything"
    for p in range(4):  # committed work is in the table (changelog written before commit)
        assert at_kill[p] >= committed[p]

    restarted = WorkerProcess(app_id, nats_url, tmp_path / "w2.log")
    worker_processes.append(restarted)
    await _wait_all_committed(js, app_id, topic, dict(per_partition))

    final = _sum_by_partition(await read_changelog(js, changelog))
    assert final == {p: per_partition[p] + at_kill[p] - committed[p] for p in range(4)}


@pytest.mark.slow
@pytest.mark.parametrize("standby_replicas", [0, 1], ids=["no-standbys", "standbys"])
async def test_two_workers_then_one_killed_all_partitions_keep_being_processed(
    nats_url: str,
    js: JetStreamContext,
    app_id: str,
    worker_processes: list[WorkerProcess],
    tmp_path,
    standby_replicas: int,
) -> None:
    topic, changelog = f"{app_id}-events", f"{app_id}-counts-changelog"
    a = WorkerProcess(app_id, nats_url, tmp_path / "a.log", standby_replicas)
    b = WorkerProcess(app_id, nats_url, tmp_path / "b.log", standby_replicas)
    worker_processes.extend([a, b])

    async def both_members() -> bool:
        return await _members(js, app_id) == 2

    await eventually(both_members, 60, "a generation with both workers")
    log = GroupLog()
    await log.start(js, app_id)
    owned_by_a = await _owned_partitions(js, app_id, a.pid, topic)
    owned_by_b = await _owned_partitions(js, app_id, b.pid, topic)
    assert owned_by_a and owned_by_b and owned_by_a | owned_by_b == {0, 1, 2, 3}
    await eventually(lambda: topic_declared(js, topic), 30, "topic declared")

    per_partition = await publish_events(js, topic, N)

    async def midway() -> bool:
        c = await committed_offsets(js, app_id, topic)
        return all(c[p] - 1 >= per_partition[p] // 4 for p in owned_by_a)

    await eventually(midway, 60, "worker a committed some of its work")
    member_a, member_b = _member_of(log, a.pid), _member_of(log, b.pid)
    await eventually(lambda: log.ready(member_b, member_a), 30, "heartbeats logged")
    a.kill()
    # Nobody writes a's partitions until the takeover (session timeout), so this is exact.
    at_kill = _sum_by_partition(await read_changelog(js, changelog))
    committed = {p: c - 1 for p, c in (await committed_offsets(js, app_id, topic)).items()}

    async def taken_over() -> bool:
        return await _owned_partitions(js, app_id, b.pid, topic) == {0, 1, 2, 3}

    await eventually(taken_over, 30, "worker b owning every partition")
    # The takeover bound, judged on b's heartbeats rather than on the wall clock of a busy machine.
    log.assert_dropped_on_time(member_a, member_b, SESSION_TIMEOUT)
    await log.stop()

    await _wait_all_committed(js, app_id, topic, dict(per_partition))
    final = _sum_by_partition(await read_changelog(js, changelog))
    context = f"a={owned_by_a} n={dict(per_partition)} at_kill={at_kill} committed={committed} final={final}"
    for p in owned_by_a:
        assert final[p] == per_partition[p] + at_kill[p] - committed[p], context
    for p in owned_by_b:
        assert final[p] == per_partition[p], context

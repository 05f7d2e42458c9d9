"""The task flow every fault test of issue 21 runs, and how it is counted.

Tasks are enqueued at a steady rate, each with an idempotency key, by a
producer given every node's URL, and served by two workers of the same agent
connected to different nodes; the PostgreSQL recorder (the ``EXECUTIONS``
projection) runs on its own connection. A fault runs alongside: the flow
goes on until the fault is over and the planned number of tasks is enqueued.
An enqueue that fails (an election, a paused node) is retried with its key,
as a real client would.

Then every accepted run must be finished in ``af_runs``, with exactly one
finished event on ``AF_EVENTS`` and one row in ``executions``. Handler re-runs
(a worker whose ack was lost in the fault) are reported, not counted as
duplicates: effects are idempotent by run id, outcomes are recorded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.recorder import EXECUTIONS, Recorder
from agents.store.migrations import apply_migrations
from mesh import names
from mesh.cluster import NatsCluster
from mesh.errors import IdempotencyKeyReused, InvalidTask, QueueFull
from mesh.provision import ProvisionConfig, provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually

from .conftest import REPLICAS

ENQUEUE_PATIENCE_S = 45.0  # how long one enqueue is retried before it counts as refused
RETRY_PAUSE_S = 0.2  # a client's back-off between retries
FINISH_DEADLINE_S = 60.0
ACK_WAIT_S = 10.0  # a worker's lost ack is redelivered this soon
_NOT_RETRIED = (IdempotencyKeyReused, InvalidTask, QueueFull)


@dataclass
class Tally:
    planned: int = 0  # enqueue requests made (each retried until answered)
    accepted: dict[str, str] = field(default_factory=dict)  # idempotency key -> run id
    accepted_at: dict[str, float] = field(default_factory=dict)  # idempotency key -> monotonic time
    refused: dict[str, str] = field(default_factory=dict)  # idempotency key -> last error
    retries: Counter[str] = field(default_factory=Counter)  # error type -> enqueue retries
    runs: Counter[str] = field(default_factory=Counter)  # run id -> handler completions
    statuses: Counter[str] = field(default_factory=Counter)  # final status -> runs, once all are final


@dataclass(frozen=True)
class Conn:
    nc: Client
    js: JetStreamContext


async def provisioned_r3(cluster: NatsCluster) -> NatsCluster:
    """The platform's streams and buckets on ``cluster``, each with 3 replicas."""
    nc = await connect(",".join(cluster.urls), name="pytest-faults-provision")
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
    return cluster


@asynccontextmanager
async def connections(
    cluster: NatsCluster, firsts: Sequence[int], only: bool = False, timeout: float = 10.0
) -> AsyncIterator[list[Conn]]:
    """One connection per entry of ``firsts``, each to that node first (the
    others follow in the list, so it fails over), or to it ``only``;
    ``timeout``: its JetStream API requests'."""
    urls = cluster.urls
    made: list[Conn] = []
    try:
        for i, first in enumerate(firsts):
            order = [urls[first]] if only else urls[first:] + urls[:first]
            nc = await connect(",".join(order), name=f"pytest-faults-{i}-n{first}", dont_randomize=True)
            made.append(Conn(nc, await jetstream(nc, timeout=timeout)))
        yield made
    finally:
        for c in made:
            if not c.nc.is_closed:
                await c.nc.close()


@asynccontextmanager
async def recording(cluster: NatsCluster, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The PostgreSQL recorder (``executions``) running on the cluster; yields its pool."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        async with connections(cluster, [0]) as (c,):
            recorder = Recorder(c.nc, c.js, pool, poll_s=0.2, projection=EXECUTIONS)
            await recorder.start()
            try:
                yield pool
            finally:
                await recorder.stop()
    finally:
        await pool.close()


async def enqueue(queue: TaskQueue, agent: str, key: str, n: int, tally: Tally, patience: float) -> None:
    """One client request, retried with its idempotency key until it is answered."""
    spec = TaskSpec(agent=agent, input={"n": n}, idempotency_key=key)
    tally.planned += 1
    deadline = time.monotonic() + patience
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
            await asyncio.sleep(RETRY_PAUSE_S)  # a client's retry back-off
            continue
        tally.accepted[key] = done.run_id
        tally.accepted_at[key] = time.monotonic()
        return


@dataclass
class Outcome:
    """What a flow through a fault came to, and its one summary line."""

    label: str
    accepted: set[str]
    events: dict[str, int]  # run id -> finished events on AF_EVENTS
    rows: dict[str, int]  # run id -> rows in `executions`
    tally: Tally
    took: float
    completed: list[int] = field(default_factory=list)  # runs recorded by each worker
    extra: str = ""

    @property
    def finished(self) -> set[str]:
        return {run for run in self.accepted if self.events.get(run, 0) >= 1}

    @property
    def lost(self) -> set[str]:
        return self.accepted - self.finished

    @property
    def duplicated(self) -> set[str]:
        return {run for run, count in self.events.items() if count > 1}

    def line(self) -> str:
        reruns = sum(1 for count in self.tally.runs.values() if count > 1)
        return (
            f"[{self.label}] planned={self.tally.planned} accepted={len(self.accepted)} "
            f"finished={len(self.finished)} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"pg_rows={sum(self.rows.values())} "
            f"| refused={len(self.tally.refused)} enqueue retries={dict(self.tally.retries)} "
            f"handler re-runs={reruns} per worker={self.completed} statuses={dict(self.tally.statuses)}"
            f"{self.extra} took={self.took:.1f}s"
        )

    def check(self) -> None:
        """Every requested task accepted, finished once, recorded once in PostgreSQL."""
        assert not self.tally.refused, self.tally.refused
        assert len(self.accepted) == self.tally.planned, (len(self.accepted), self.tally.planned)
        assert set(self.events) <= self.accepted, sorted(set(self.events) - self.accepted)[:5]
        assert not self.lost, sorted(self.lost)[:5]
        assert not self.duplicated, {run: self.events[run] for run in sorted(self.duplicated)[:5]}
        assert set(self.rows) == self.accepted, sorted(set(self.rows) ^ self.accepted)[:5]
        assert all(count == 1 for count in self.rows.values())
        assert set(self.tally.statuses) == {"succeeded"}, self.tally.statuses


Fault = Callable[[Tally], Awaitable[None]]


async def flow_through(
    label: str,
    producer: Conn,
    workers: Sequence[Conn],
    pool: asyncpg.Pool,
    *,
    agent: str,
    tasks: int,
    rate_per_s: float,
    during: Fault,
    after: Callable[[], Awaitable[None]] | None = None,
    max_tasks: int | None = None,
    work_s: float = 0.0,
    ack_wait_s: float = ACK_WAIT_S,
) -> Outcome:
    """Enqueue at ``rate_per_s`` while ``during`` runs (at least ``tasks``, and
    on until ``during`` returns, at most ``max_tasks``); once every enqueue is
    answered, ``after`` (a heal); then wait for every accepted run to finish
    and count. ``during`` may add enqueues of its own to the tally (keys of
    ``agent``): they are counted with the rest. Each run takes ``work_s``
    (so a worker holds tasks when its node fails); a lost ack is redelivered
    after ``ack_wait_s``."""
    started = time.monotonic()
    tally = Tally()

    async def handler(ctx: TaskContext) -> Any:
        if work_s:
            await asyncio.sleep(work_s)  # the handler's work
        tally.runs[ctx.run_id] += 1
        return {"n": ctx.input["n"]}

    cfg = AgentQueueConfig(agent, ack_wait_s=ack_wait_s, backoff_base_s=0.2, backoff_max_s=1.0)
    running = [
        TaskWorker(c.nc, c.js, {agent: (cfg, handler)}, name=f"fault-worker-{i}")
        for i, c in enumerate(workers)
    ]
    for worker in running:
        await worker.start()
    try:
        async with TaskQueue(producer.nc, producer.js) as queue:
            fault = asyncio.create_task(during(tally))
            pending: list[asyncio.Task[None]] = []
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            n = 0
            try:
                while (n < tasks or not fault.done()) and n < (max_tasks or tasks * 10):
                    # Pacing for a steady rate (not a wait for anything to happen).
                    await asyncio.sleep(max(0.0, t0 + n / rate_per_s - loop.time()))
                    key = f"{agent}-{n}"
                    pending.append(
                        asyncio.create_task(enqueue(queue, agent, key, n, tally, ENQUEUE_PATIENCE_S))
                    )
                    n += 1
                await fault
            finally:
                if not fault.done():
                    fault.cancel()
                await asyncio.gather(*pending)
        if after is not None:
            await after()
        reader = producer.js
        await eventually(
            lambda: all_finished(reader, tally),
            timeout=FINISH_DEADLINE_S,
            every=0.5,
            what="every run finished",
        )
        accepted = set(tally.accepted.values())
        # On time out, count what is there: Outcome.check names the runs missing or extra.
        with contextlib.suppress(AssertionError):
            # The recorder's consumer redelivers a batch whose pull died with a node after
            # its ack wait (60 s, agents/recorder.py): a row may come that late.
            await eventually(lambda: recorded_rows(pool, agent, accepted), timeout=75, every=0.5, what="rows")
        rows = await recorded_rows(pool, agent, set()) or {}
        events = await finished_events(reader, agent)
    finally:
        for worker in running:
            await worker.stop(drain_timeout=10)
    outcome = Outcome(label, accepted, events, rows, tally, time.monotonic() - started)
    outcome.completed = [worker.completed for worker in running]
    return outcome


async def all_finished(js: JetStreamContext, tally: Tally) -> bool:
    """Every accepted run is final in ``af_runs`` (then counted by status in the tally)."""
    statuses: Counter[str] = Counter()
    for run_id in tally.accepted.values():
        try:
            state = await get_run(js, run_id)
        except Exception:
            return False  # the bucket is electing: ask again
        if state is None or not state.status.finished:
            return False
        statuses[state.status.value] += 1
    tally.statuses = statuses
    return True


async def finished_events(js: JetStreamContext, agent: str) -> dict[str, int]:
    """Finished events per run id of ``agent`` on AF_EVENTS."""
    prefix = names.finished_subject(agent, "")
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=names.finished_subject(agent, "*"))
    return {subject[len(prefix) :]: int(count) for subject, count in (info.state.subjects or {}).items()}


async def recorded_rows(pool: asyncpg.Pool, agent: str, expected: set[str]) -> dict[str, int] | None:
    """Rows per run id of ``agent`` in ``executions``, once every ``expected`` run has one."""
    rows = await pool.fetch(
        "SELECT run_id, count(*) AS n FROM executions WHERE agent_key = $1 GROUP BY run_id", agent
    )
    found = {str(row["run_id"]): int(row["n"]) for row in rows}
    return found if expected <= found.keys() else None


async def leader(cluster: NatsCluster, stream: str, other_than: int | None = None) -> tuple[int] | None:
    """The leader's index in a tuple (node 0 is a leader too, and falsy)."""
    found = await asyncio.to_thread(cluster.leader_of, stream)
    return None if found is None or found == other_than else (found,)

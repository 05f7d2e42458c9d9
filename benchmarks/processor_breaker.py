"""The breaker processor's throughput, and how fast the fleet reacts to a trip.

``breaker_events_per_s``: finished events (pre-published, 100 agents, none
tripping) the breaker processor applies per second on one Faust worker, timed
from its first applied event to its last (start-up and rebalance excluded).

``breaker_reaction_p50_ms`` / ``_p99_ms``: from publishing the finished event
that crosses the threshold to every one of two task workers (connections of
their own) having stopped taking the agent's tasks, over repeated trips (each
followed by a force-close). ``faust_table_counter_per_s``: the same number of
events through a Faust agent that only counts them in a table (one changelog
record per event, as the breaker writes), same server, same run: the ceiling
on this machine now. Processor and workers share this process's event
loop, as the test does; in production each is a process of its own.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

from nats.js import JetStreamContext

from benchmarks.harness import wait_until
from benchmarks.processors import publish_events
from benchmarks.streams import _throughput as table_counter_throughput
from benchmarks.streams import faust_worker
from mesh.envelope import Priority, utcnow
from mesh.provision import provision
from mesh.queue.breakers import force_breaker
from mesh.queue.outcome import outcome_message, success_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.queue.runs import RunState, RunStatus
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from mesh.wire.protocol import parse_headers
from streams import naming
from streams.processors.app import ProcessorConfig, prepare, processor_app
from streams.processors.breaker import TABLE, install
from streams.processors.executions import EXECUTIONS_TOPIC

__all__ = ["bench_breaker"]

AGENTS = 100
TRIPS = 30


def _finished(agent: str, i: int, failed: bool) -> tuple[str, bytes, dict[str, str]]:
    task = build_task(TaskSpec(agent, {"i": i}), f"{agent}-{i:06d}")
    now = utcnow()
    if failed:
        state = RunState(run_id=task.id, agent=agent, status=RunStatus.FAILED, attempts=1, started_at=now,
                         finished_at=now, enqueued_at=task.created_at, error="boom",
                         version="1.0.0")  # fmt: skip
        subject, data, headers = outcome_message(task, state)
    else:
        subject, data, headers = success_message(task, agent, 1, now, now, {"i": i}, version="1.0.0")
    return subject, data, parse_headers(headers)


def _calls(app: Any, agents: list[str]) -> int:
    table = app.tables[TABLE]
    return sum(sum(s[1] for s in value["agent"]["seconds"]) for a in agents if (value := table.get(a)))


async def _throughput(nats_url: str, js: JetStreamContext, events: int) -> float:
    agents = [f"bench-{i:03d}" for i in range(AGENTS)]
    partitions = await prepare(nats_url)
    await publish_events(js, [_finished(agents[i % AGENTS], i, failed=False) for i in range(events)])

    async def sourced() -> bool:  # the server copies them into the topic: time the processor only
        infos = [await js.stream_info(naming.stream_name(EXECUTIONS_TOPIC, p)) for p in range(partitions)]
        return sum(info.state.messages for info in infos) >= events

    await wait_until(sourced, 120, "the events in af-executions")
    config = ProcessorConfig(nats_url, partitions, options={"minimum_calls": events + 1})
    app, source = processor_app("breaker", config)
    decisions = install(app, source, config)
    async with faust_worker(app):
        await wait_until(lambda: decisions.applied > 0, 60, "the first event applied", interval=0.005)
        t0, first = time.perf_counter(), decisions.applied
        await wait_until(lambda: decisions.applied >= events, 300, f"{events} events applied", interval=0.02)
        rate = (events - first) / (time.perf_counter() - t0)
        if _calls(app, agents) != events:
            raise AssertionError(f"bench: the windows hold {_calls(app, agents)} calls, not {events}")
    return rate


async def _reactions(nats_url: str, js: JetStreamContext, trips: int) -> list[float]:
    agent = "bench-tripping"
    partitions = await prepare(nats_url)
    config = ProcessorConfig(nats_url, partitions, options={"open_s": 3600})
    app, source = processor_app("breaker", config)
    decisions = install(app, source, config)
    conns = [await connect(nats_url, name=f"bench-breaker-worker-{n}") for n in range(2)]
    workers: list[TaskWorker] = []

    async def noop(ctx: TaskContext) -> None:
        return None

    reactions: list[float] = []
    async with faust_worker(app):
        await wait_until(decisions.ready.is_set, 60, "the processor started")
        try:
            for nc in conns:
                cfg = AgentQueueConfig(agent, priorities=(Priority.NORMAL,))
                worker = TaskWorker(nc, await jetstream(nc), {agent: (cfg, noop)}, idle_poll_s=0.5)
                await worker.start()
                workers.append(worker)
            lanes = [lane for w in workers for lane in w.lanes]
            n = 0
            for _ in range(trips):
                for _ in range(4):
                    await publish_events(js, [_finished(agent, n, failed=True)])
                    n += 1
                await wait_until(
                    lambda: _calls(app, [agent]) == 4, 60, "4 calls in the window", interval=0.002
                )
                t0 = time.perf_counter()
                await publish_events(js, [_finished(agent, n, failed=True)])
                n += 1
                await wait_until(lambda: all(lane.tripped for lane in lanes), 30, "every worker stopped",
                                 interval=0.001)  # fmt: skip
                reactions.append((time.perf_counter() - t0) * 1000)
                await force_breaker(js, agent, False, "bench", "next trip")
                await wait_until(lambda: not any(lane.tripped for lane in lanes), 30, "workers take it again")
                await wait_until(lambda: not decisions.breaker_of(agent).is_open, 30, "the processor saw it")
        finally:
            for worker in workers:
                await worker.stop(drain_timeout=5)
            for nc in conns:
                await nc.close()
    return reactions


async def bench_breaker(nats_url: str, events: int = 50_000, trips: int = TRIPS) -> dict[str, float]:
    """Run both measurements on a fresh server at ``nats_url`` (it is provisioned here)."""
    nc = await connect(nats_url, name="bench-breaker")
    try:
        js = await jetstream(nc)
        await provision(js)
        rate = await _throughput(nats_url, js, events)
        with tempfile.TemporaryDirectory() as datadir:  # Faust with a table and nothing else, same run
            baseline = await table_counter_throughput(nats_url, js, events, datadir)
        reactions = sorted(await _reactions(nats_url, js, trips))
    finally:
        await nc.close()
    p99 = reactions[min(len(reactions) - 1, round(0.99 * (len(reactions) - 1)))]
    return {
        "breaker_events_per_s": round(rate, 1),
        "faust_table_counter_per_s": round(baseline, 1),  # the ceiling: one table write per event, no work
        "breaker_reaction_p50_ms": round(statistics.median(reactions), 1),
        "breaker_reaction_p99_ms": round(p99, 1),
    }

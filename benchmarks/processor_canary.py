"""Canary processor benchmark: events/s one worker sustains.

``canary_events_per_s``  finished events (real ones, as workers publish them:
                         8 agents x 3 versions, log-normal durations, 5% failed)
                         pre-published into ``AF_EVENTS``; timed from the
                         processor being ready (tables recovered) until its
                         table has counted them all
``events``               how many
``publish_s``            time to pre-publish them (not part of the rate)

Each event costs the processor one table write (one changelog record) and a
DDSketch insert; KV writes are coalesced (one per version per second).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from datetime import timedelta
from typing import Any, cast

from nats.js import JetStreamContext

from benchmarks.harness import wait_until
from benchmarks.processors import publish_events
from benchmarks.streams import faust_worker
from mesh.envelope import utcnow
from mesh.provision import provision
from mesh.queue.outcome import outcome_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.queue.runs import RunState, RunStatus
from mesh.wire.connection import connect, jetstream
from mesh.wire.protocol import parse_headers
from streams import naming
from streams.processors.app import ProcessorConfig, build, prepare
from streams.processors.executions import EXECUTIONS_TOPIC

__all__ = ["bench_canary"]

AGENTS = [f"bench-agent-{i}" for i in range(8)]
VERSIONS = ["1.0.0", "1.1.0", "2.0.0-rc.1"]


def _events(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    rng = random.Random(7)
    now = utcnow()
    made = []
    for i in range(n):
        agent, version = AGENTS[i % len(AGENTS)], VERSIONS[(i // len(AGENTS)) % len(VERSIONS)]
        run = f"bench-{i:07d}"
        task = build_task(TaskSpec(agent, {"i": i}, tenant="bench"), run)
        failed = rng.random() < 0.05
        state = RunState(
            run_id=run, agent=agent, tenant="bench", attempts=1, enqueued_at=now, finished_at=now,
            status=RunStatus.FAILED if failed else RunStatus.SUCCEEDED, version=version,
            started_at=now - timedelta(milliseconds=rng.lognormvariate(4, 0.7)),
        )  # fmt: skip
        subject, data, headers = outcome_message(task, state)
        made.append((subject, data, parse_headers(headers)))
    return made


async def _in_topic(js: JetStreamContext, partitions: int) -> int:
    total = 0
    for p in range(partitions):
        total += (await js.stream_info(naming.stream_name(EXECUTIONS_TOPIC, p))).state.messages
    return total


def _counted(table: Any) -> int:
    """Requests in the canary table: each value is a bucket's JSON ``[offset, requests, …]``;
    read without rebuilding sketches, which would cost the processor's CPU."""
    return sum(json.loads(raw)[1] for raw in table.data.values() if raw is not None)


async def bench_canary(nats_url: str, events: int = 50_000) -> dict[str, float]:
    """Run the canary processor over ``events`` pre-published finished events on the
    server at ``nats_url``: a fresh one, or one whose ``af-executions`` holds only
    succeeded or failed runs (the processor reads and counts every one it holds)."""
    nc = await connect(nats_url, name="bench-canary")
    try:
        js = await jetstream(nc)
        await provision(js)
        partitions = await prepare(nats_url)
        already = await _in_topic(js, partitions)
        batch = _events(events)
        start = time.perf_counter()
        await publish_events(js, batch)
        await wait_until(
            lambda: _at_least(js, partitions, already + events), 120, "every event in af-executions"
        )
        publish_s = time.perf_counter() - start
        with tempfile.TemporaryDirectory(prefix="bench-canary-") as datadir:
            app = build("canary", ProcessorConfig(nats_url, partitions), datadir=datadir)
            table = app.tables["canary-buckets"]
            async with faust_worker(app):
                await wait_until(cast(Any, app.tables).recovery.completed.is_set, 120, "processor ready")
                # Not "counted at ready": the worker starts counting as soon as it is ready,
                # before this poll sees it. Every event in the topic is one of ours (a fresh
                # server), or one counted before (already).
                start = time.perf_counter()
                await wait_until(
                    lambda: _counted(table) >= already + events, 600, "events counted", interval=0.05
                )
                elapsed = time.perf_counter() - start
    finally:
        await nc.close()
    return {
        "canary_events_per_s": round(events / elapsed, 1),
        "events": events,
        "publish_s": round(publish_s, 2),
    }


async def _at_least(js: JetStreamContext, partitions: int, n: int) -> bool:
    return await _in_topic(js, partitions) >= n

"""Metering on real servers: every execution priced and counted exactly once, a
SIGKILLed processor included; billing records one per execution."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.envelope import utcnow
from mesh.queue.outcome import success_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.wire.connection import connect, jetstream
from mesh.wire.protocol import parse_headers
from streams.processors.executions import read_finished
from streams.processors.metering import USAGE_TABLE
from streams.processors.pricing import DEFAULT_PRICES, price
from tests.helpers import eventually
from tests.integration.processors.processes import ProcessorProcess
from tests.integration.streams.streams_helpers import read_changelog

CHANGELOG = f"af-metering-{USAGE_TABLE}-changelog"
AGENTS = [f"agent-{i}" for i in range(6)]
TENANTS = ["acme", "globex", "initech"]


def workload(n: int) -> Iterator[tuple[str, bytes, dict[str, str]]]:
    """``n`` finished events with varied cost: measured and unmeasured runs, model tokens."""
    for i in range(n):
        agent, tenant = AGENTS[i % len(AGENTS)], TENANTS[i % len(TENANTS) if i % 7 else 0]
        task = build_task(TaskSpec(agent, {"i": i, "pad": "x" * (i % 50)}, tenant=tenant), f"r{i:06d}")
        now = utcnow()
        audit = {"cpu_ms": 3.0 + i % 11, "peak_rss_bytes": 40_000_000 + i} if i % 3 else None
        usage = (
            [{"model": "small-model", "input_tokens": 100 + i % 97, "output_tokens": i % 13}]
            if i % 4 == 0
            else None
        )
        subject, data, headers = success_message(
            task, agent, 1, now, now, {"co2e_kg": i / 7}, None, audit, "1.0.0", usage
        )
        yield subject, data, parse_headers(headers)


async def publish(js: JetStreamContext, events: list[tuple[str, bytes, dict[str, str]]]) -> None:
    for start in range(0, len(events), 500):
        acks = [js.publish_async(s, d, headers=h) for s, d, h in events[start : start + 500]]  # type: ignore[attr-defined]
        for ack in acks:
            await ack


async def usage_totals(js: JetStreamContext) -> dict[str, int]:
    changelog = await read_changelog(js, CHANGELOG, 4)
    totals: Counter[str] = Counter()
    for part in changelog.values():
        for entry in part.values():
            totals["n"] += entry["n"]
            totals["cost"] += entry["cost"]
            totals["input_tokens"] += entry["input_tokens"]
    return dict(totals)


@pytest.fixture
def processors(tmp_path: Path) -> Iterator[list[ProcessorProcess]]:
    procs: list[ProcessorProcess] = []
    yield procs
    for p in procs:
        p.stop()


async def test_costs_are_exact_and_counted_once_across_a_sigkilled_processor(
    own_nats: NatsServer, own_js: JetStreamContext, tmp_path: Path, processors: list[ProcessorProcess]
) -> None:
    n = 12_000
    events = list(workload(n))
    expected = Counter()
    for _, data, _ in events:
        e = read_finished(data)
        assert e is not None
        expected["n"] += 1
        expected["cost"] += price(e.payload, DEFAULT_PRICES, len(data)).total
        expected["input_tokens"] += sum(u.input_tokens for u in e.payload.usage)
    await publish(own_js, events)

    first = ProcessorProcess("metering", own_nats.url, tmp_path / "metering-1.log")
    processors.append(first)
    # Killed once it has counted some, not all (its changelog says how far it got).
    await eventually(lambda: _counted_between(own_js, n // 6, n - 1), 90, "part of the workload counted")
    first.kill()
    second = ProcessorProcess("metering", own_nats.url, tmp_path / "metering-2.log")
    processors.append(second)
    totals = await eventually(lambda: _counted_all(own_js, n), 120, f"all {n} counted")
    assert totals == dict(expected), second.output()[-3000:]
    assert first.output().count("Traceback") == 0 and second.output().count("Traceback") == 0


async def _counted_between(js: JetStreamContext, low: int, high: int) -> bool:
    counted = (await usage_totals(js)).get("n", 0)
    return low <= counted <= high


async def _counted_all(js: JetStreamContext, n: int) -> dict[str, int] | None:
    totals = await usage_totals(js)
    return totals if totals.get("n", 0) >= n else None


async def test_counts_stay_exact_across_a_kill_9_of_nats_server(
    own_nats: NatsServer, own_js: JetStreamContext, tmp_path: Path, processors: list[ProcessorProcess]
) -> None:
    """The server's own copying (AF_EVENTS -> AF_EXECUTIONS -> the topic's partitions)
    resumes where it was after a crash, and the processor reconnects: nothing lost,
    nothing counted twice."""
    n = 6_000
    events = list(workload(n))
    await publish(own_js, events[: n // 2])
    processor = ProcessorProcess("metering", own_nats.url, tmp_path / "metering.log")
    processors.append(processor)
    await eventually(lambda: _counted_between(own_js, 1, n), 90, "counting under way")
    own_nats.kill()
    own_nats.start()
    nc = await connect(own_nats.url)
    try:
        js = await jetstream(nc)
        await publish(js, events[n // 2 :])
        totals = await eventually(lambda: _counted_all(js, n), 120, f"all {n} counted")
        assert totals["n"] == n, processor.output()[-3000:]
        want = sum(
            price(e.payload, DEFAULT_PRICES, len(d)).total for _, d, _ in events if (e := read_finished(d))
        )
        assert totals["cost"] == want
    finally:
        await nc.close()

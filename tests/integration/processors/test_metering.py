"""Metering on real servers: every execution priced and counted exactly once, a
SIGKILLed processor included; billing records one per execution."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.envelope import utcnow
from mesh.kv import current_entries
from mesh.queue.billing import NANO
from mesh.queue.budgets import Budget, Period
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


async def test_two_replicas_share_the_partitions_and_a_tenant_budget_spans_them(
    own_nats: NatsServer, own_js: JetStreamContext, tmp_path: Path, processors: list[ProcessorProcess]
) -> None:
    """Each replica counts its own partitions; a tenant's spend is spread over the
    partitions of its agents, and its budget is decided on the sum of both replicas'
    parts: one alert, at the right total."""
    n = 6_000
    events = list(workload(n))
    acme = sum(
        price(e.payload, DEFAULT_PRICES, len(d)).total
        for _, d, _ in events
        if (e := read_finished(d)) and e.payload.tenant == "acme"
    )
    kv = await own_js.key_value(names.BUCKET_BUDGETS)
    budget = Budget(id="acme-day", tenant="acme", period=Period.DAY, limit=acme / NANO, thresholds=[100])
    await kv.put("budget.acme-day", budget.model_dump_json().encode())
    for i in range(2):
        processors.append(ProcessorProcess("metering", own_nats.url, tmp_path / f"metering-{i}.log"))
    await eventually(lambda: _members(own_js, 2), 60, "two replicas in the group")
    await publish(own_js, events)
    totals = await eventually(lambda: _counted_all(own_js, n), 120, f"all {n} counted")
    assert totals["n"] == n
    period = Period.DAY.bounds(utcnow())[0]
    parts = await eventually(lambda: _parts(own_js, f"acme-day.{period}", acme), 60, "the parts add up")
    assert len([p for p in parts.values() if p]) > 1  # acme's agents are on more than one partition
    subject = f"af.events.budget.alert.acme-day.{period}.100"
    await eventually(lambda: _alerts(own_js, subject), 30, "the 100 % alert")
    # Its spend rate for anomalies likewise: each replica's parts in KV, summed.
    hour = Period.HOUR.bounds(utcnow())[0]
    rates = await eventually(lambda: _rates(own_js, "acme", hour, acme), 60, "acme's hourly parts add up")
    assert len([r for r in rates.values() if r]) > 1
    for p in processors:
        p.stop()
    assert await _alerts(own_js, subject) == 1
    owned = [p.output().count("partitions assigned") for p in processors]
    assert all(owned), "both replicas held partitions"


async def _members(js: JetStreamContext, n: int) -> bool:
    try:
        kv = await js.key_value("faust-group-af-metering")
        entry = await kv.get("assignment")
    except Exception:
        return False
    return len(json.loads(entry.value or b"{}").get("members", [])) >= n


async def _parts(js: JetStreamContext, prefix: str, want: int) -> dict[str, int] | None:
    kv = await js.key_value(names.BUCKET_BUDGETS)
    entries = await current_entries(js, kv, names.BUCKET_BUDGETS, f"partial.{prefix}.*")
    parts = {e.key: json.loads(e.value or b"{}")["used"] for e in entries}
    return parts if sum(parts.values()) == want else None


async def _rates(js: JetStreamContext, tenant: str, hour: str, want: int) -> dict[str, int] | None:
    kv = await js.key_value(names.BUCKET_BUDGETS)
    entries = await current_entries(js, kv, names.BUCKET_BUDGETS, f"rate.tenant.{tenant}.*")
    parts = {e.key: json.loads(e.value or b"{}") for e in entries}
    current = {key: part["current"] for key, part in parts.items() if part["hour"] == hour}
    return current if sum(current.values()) == want else None


async def _alerts(js: JetStreamContext, subject: str) -> int:
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())

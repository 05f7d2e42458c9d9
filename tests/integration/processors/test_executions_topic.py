"""``af-executions``: every finished execution reaches the processors, partitioned by
agent, in order, filled by the server (no process copies events)."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, cast

import faust
import pytest
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.envelope import utcnow
from mesh.queue.outcome import success_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.wire.protocol import parse_headers
from streams.processors.app import ProcessorConfig, build, prepare, processor_app
from streams.processors.executions import EXECUTIONS_TOPIC, read_finished
from streams.topics import TopicRegistry
from tests.helpers import eventually
from tests.integration.streams.streams_workers import running


async def publish_finished(
    js: JetStreamContext, agent: str, n: int, tenant: str = "t", start: int = 0
) -> list[str]:
    """``n`` real finished events of ``agent`` (as a worker writes them), runs
    ``<agent>-<start>`` on; their run ids."""
    runs = []
    for i in range(start, start + n):
        task = build_task(TaskSpec(agent, {"i": i}, tenant=tenant), f"{agent}-{i:04d}")
        now = utcnow()
        subject, data, headers = success_message(task, agent, 1, now, now, {"i": i}, version="1.0.0")
        await js.publish(subject, data, headers=parse_headers(headers))
        runs.append(task.id)
    return runs


async def test_each_agents_executions_arrive_once_in_one_partition_in_order(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    partitions = await prepare(own_nats.url)
    assert partitions == 4
    spec = await TopicRegistry(own_js).describe(EXECUTIONS_TOPIC)
    assert spec is not None and spec.sourced and spec.partitions == 4
    assert await prepare(own_nats.url) == 4  # idempotent

    seen: dict[str, list[tuple[int, int, str]]] = defaultdict(list)  # agent -> (partition, offset, run)
    app, source = processor_app("probe", ProcessorConfig(own_nats.url, partitions, session_timeout_s=4,
                                                          heartbeat_s=0.5))  # fmt: skip

    @app.agent(source)
    async def probe(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            finished = read_finished(event.value)
            if finished is not None:
                seen[finished.payload.agent].append(
                    (event.message.partition, event.message.offset, finished.payload.run_id)
                )

    agents = [f"agent-{i}" for i in range(12)]
    for a in agents:  # half before the processor runs, half while it runs
        await publish_finished(own_js, a, 10)
    await own_js.publish(names.lifecycle_subject("agent-0"), b"{}")  # not an execution: not seen
    async with running(app):
        for a in agents:
            await publish_finished(own_js, a, 10, start=10)
        await eventually(lambda: sum(map(len, seen.values())) >= 240, 30, "all 240 executions")
        for a in agents:  # a last one each: whatever else was coming for an agent came before it
            await publish_finished(own_js, a, 1, start=20)
        await eventually(lambda: all(seen[a][-1][2] == f"{a}-0020" for a in agents), 30, "the last ones")
    used = set()
    for a in agents:
        assert [run for _, _, run in seen[a]] == [f"{a}-{i:04d}" for i in range(21)]  # once each, in order
        assert len({p for p, _, _ in seen[a]}) == 1  # one partition per agent
        offsets = [o for _, o, _ in seen[a]]
        assert offsets == sorted(offsets)
        used.add(seen[a][0][0])
    assert len(used) > 1  # 12 agents spread over the partitions


async def test_a_topic_with_another_partition_count_is_refused_by_name(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    await TopicRegistry(own_js).declare(EXECUTIONS_TOPIC, 2)  # as a consumer's auto-create would
    with pytest.raises(ValueError, match="af-executions has 2 partitions of its own, AF_EXECUTIONS has 4"):
        await prepare(own_nats.url)


async def test_a_processor_starts_on_a_machine_without_its_data_directory(
    own_nats: NatsServer, own_js: JetStreamContext, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default data directory is <system temp>/af-processors/af-<name>: on a fresh
    machine neither level exists, and Faust makes only the last (the worker died at start,
    and `bench processors` timed out waiting for it; the tests never saw it, since they
    send every Faust app elsewhere with APP_DATADIR, which Faust prefers)."""
    fresh = tmp_path / "fresh-tmp"
    fresh.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(fresh))
    monkeypatch.delenv("APP_DATADIR")  # the test session's own Faust data dir (tests/conftest.py)
    partitions = await prepare(own_nats.url)
    app = build("metering", ProcessorConfig(own_nats.url, partitions, session_timeout_s=4, heartbeat_s=0.5))
    async with running(app):
        recovered = cast(Any, app.tables).recovery.completed
        await eventually(recovered.is_set, 30, "the processor started and recovered its tables")
    assert (fresh / "af-processors" / "af-metering").is_dir()

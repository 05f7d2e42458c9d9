"""What the breaker tests share: finished events as workers write them, a processor, a worker fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import faust
from nats.js import JetStreamContext

from mesh.envelope import utcnow
from mesh.queue.outcome import outcome_message, success_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.queue.runs import RunState, RunStatus
from mesh.queue.worker import TaskContext
from mesh.wire.protocol import parse_headers
from streams.processors.app import ProcessorConfig, prepare, processor_app
from streams.processors.breaker import TABLE, BreakerDecisions, install
from tests.helpers import eventually
from tests.integration.streams.streams_workers import running

Handler = Callable[[TaskContext], Awaitable[Any]]


async def publish_outcome(
    js: JetStreamContext, agent: str, i: int, failed: bool, version: str = "1.0.0"
) -> str:
    """One finished run of ``agent`` (``<agent>-<i>``) by ``version``, succeeded or failed,
    as a worker writes it."""
    task = build_task(TaskSpec(agent, {"i": i}), f"{agent}-{i:05d}")
    now = utcnow()
    if failed:
        state = RunState(run_id=task.id, agent=agent, status=RunStatus.FAILED, attempts=1, started_at=now,
                         finished_at=now, enqueued_at=task.created_at, error="boom",
                         version=version)  # fmt: skip
        subject, data, headers = outcome_message(task, state)
    else:
        subject, data, headers = success_message(task, agent, 1, now, now, {"i": i}, version=version)
    await js.publish(subject, data, headers=parse_headers(headers))
    return task.id


@asynccontextmanager
async def breaker_processor(url: str, **options: Any) -> AsyncIterator[tuple[faust.App, BreakerDecisions]]:
    partitions = await prepare(url)
    config = ProcessorConfig(url, partitions, session_timeout_s=4, heartbeat_s=0.5, commit_interval_s=0.5,
                             options=options)  # fmt: skip
    app, source = processor_app("breaker", config)
    decisions = install(app, source, config)
    async with running(app):
        await eventually(decisions.ready.is_set, 30, "the breaker processor started")
        yield app, decisions


def window_calls(app: faust.App, agent: str) -> int:
    """How many calls ``agent``'s window holds in the processor (0: none yet)."""
    value = app.tables[TABLE].get(agent)
    return sum(s[1] for s in value["agent"]["seconds"]) if value else 0

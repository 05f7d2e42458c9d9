"""Helpers and fixtures for the scheduler tests (real nats-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from agents.registry import example_registry
from gateway.app import Gateway, Parts
from gateway.settings import Settings
from mesh import names
from mesh.envelope import Envelope, decode, new_id
from mesh.queue.producer import TaskQueue
from mesh.schedules.scheduler import Scheduler
from mesh.wire.puller import Puller


async def task_count(js: JetStreamContext, agent: str, priority: int = 2) -> int:
    subject = names.task_subject(agent, priority)
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def read_tasks(nc: Client, js: JetStreamContext, agent: str) -> list[Envelope]:
    """The tasks waiting for ``agent`` (left in place: nothing is acked)."""
    name = f"peek-{new_id()[:12]}"
    config = ConsumerConfig(name=name, filter_subject=names.task_subject(agent, 2),
                            ack_policy=AckPolicy.EXPLICIT, inactive_threshold=30.0)  # fmt: skip
    await js.add_consumer(names.STREAM_TASKS, config)
    puller = Puller(nc, names.STREAM_TASKS, name)
    await puller.start()
    try:
        msgs = await puller.take(1000)
    finally:
        await puller.close()
        await js.delete_consumer(names.STREAM_TASKS, name)
    return [decode(m.data) for m in msgs]


@pytest.fixture
async def make_scheduler(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> AsyncIterator[Callable[[], Awaitable[Scheduler]]]:
    """Start scheduler replicas on the session server; all are stopped at teardown."""
    started: list[Scheduler] = []

    async def make() -> Scheduler:
        scheduler = Scheduler(nc, mesh_js, queue, refresh_s=0.2, idle_s=0.5)
        await scheduler.start()
        started.append(scheduler)
        return scheduler

    yield make
    await asyncio.gather(*(s.stop() for s in started))


TOKEN = "schedules-token"


@pytest.fixture
async def schedules_api(
    nc: Client, mesh_js: JetStreamContext, database_url: str
) -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway API on the session servers, with none of its services running beside it."""
    parts = Parts(recorder=False, run_index=False, maintenance=False, scheduler=False, serve=False)
    gateway = Gateway(Settings(), example_registry(), parts)
    async with gateway.running(nc, database_url, token=TOKEN):
        assert gateway.app is not None
        client = TestClient(TestServer(gateway.app))
        await client.start_server()
        client.session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client
        await client.close()

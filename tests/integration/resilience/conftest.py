"""Agents with a resilience block, served by a real worker on the session's nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.registry import Registry
from agents.resilience import Resilience
from agents.runtime import worker_for
from mesh.queue.runs import RunState, get_run
from mesh.queue.worker import TaskWorker
from tests.helpers import eventually, unique


class In(BaseModel):
    i: int = 0


class Out(BaseModel):
    i: int
    by: str = ""


Behaviour = Callable[[In, RunContext], Awaitable[Out]]


def make_agent(prefix: str, block: Resilience, behave: Behaviour, **attrs: Any) -> Agent[In, Out]:
    """An agent of its own (unique key) that does ``behave`` under ``block``."""

    class Declared(Agent[In, Out]):
        Input, Output = In, Out

        async def run(self, input: In, ctx: RunContext) -> Out:
            return await behave(input, ctx)

    Declared.key, Declared.resilience = unique(prefix), block
    for name, value in attrs.items():
        setattr(Declared, name, value)
    return Declared()


Serve = Callable[..., Awaitable[TaskWorker]]


@pytest.fixture
async def serve(nc: Client, mesh_js: JetStreamContext) -> AsyncIterator[Serve]:
    """``await serve(agent, *others, concurrency=16)``: a started worker for
    ``agent`` (its registry holds ``others`` too), stopped after the test."""
    workers: list[TaskWorker] = []

    async def start(agent: Agent[Any, Any], *others: Agent[Any, Any], **options: Any) -> TaskWorker:
        registry = Registry([agent, *others])
        worker = worker_for(nc, mesh_js, registry, [agent.key], idle_poll_s=0.2, **options)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop(drain_timeout=2.0)


async def finished(js: JetStreamContext, run_id: str, timeout: float = 10.0) -> RunState:
    async def final() -> RunState | None:
        state = await get_run(js, run_id)
        return state if state is not None and state.status.finished else None

    return await eventually(final, timeout, f"run {run_id} finished", every=0.02)

"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh import names

__all__ = [
    "DOUBLE_AGENT_MODULE",
    "eventually",
    "eventually_sync",
    "finished_event",
    "fleet",
    "serve_until_sigterm",
    "unique",
]

T = TypeVar("T")


async def eventually(
    check: Callable[[], T | Awaitable[T]], timeout: float = 5.0, what: str = "", every: float = 0.01
) -> T:
    """Poll ``check`` (sync or async) every ``every`` s until it returns something
    true, and return that; fail the test naming ``what`` (and the last value)
    after ``timeout`` seconds. The one poll-with-deadline of the test suite:
    never a sleep as synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        value: T = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or check} (last: {value!r})")
        await asyncio.sleep(every)


def eventually_sync(check: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """:func:`eventually` for tests that drive processes without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what} (last: {value!r})")
        time.sleep(every)


async def finished_event(js: JetStreamContext, agent: str, run_id: str) -> dict[str, Any] | None:
    """The payload of the run's finished event on ``AF_EVENTS`` (None: not yet)."""
    try:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, run_id))
    except NotFoundError:
        return None
    payload: dict[str, Any] = json.loads(raw.data or b"{}")["payload"]
    return payload


def unique(prefix: str) -> str:
    """A fresh agent key so tests sharing one server never see each other's tasks."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# A user's agent module, outside the platform (the README's example).
DOUBLE_AGENT_MODULE = """
from pydantic import BaseModel
from agents import Agent, PermanentError, RunContext

class In(BaseModel):
    value: float

class Out(BaseModel):
    value: float

class Double(Agent[In, Out]):
    key = "double"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        if input.value < 0:
            raise PermanentError("negative values are not supported")
        return Out(value=input.value * 2)
"""


async def serve_until_sigterm(nc: Client, worker: Any, ready_subject: str) -> None:
    """A worker process's life in a test: start ``worker`` (a TaskWorker), say so on
    ``ready_subject``, serve until SIGTERM, then drain it and the connection."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await worker.start()
    await nc.publish(ready_subject, b"")
    await stop.wait()
    await worker.stop(drain_timeout=10)
    await nc.drain()


@asynccontextmanager
async def fleet(
    url: str,
    handlers: dict[str, Callable[[Any], Awaitable[Any]]],
    workers: int = 2,
    idle_poll_s: float = 0.5,
    concurrency: int = 4,
    **cfg: Any,
) -> AsyncIterator[list[Any]]:
    """``workers`` task workers (TaskWorker) of ``handlers`` in this process, each on a
    connection of its own; ``cfg``: the AgentQueueConfig of every agent."""
    from mesh.queue.worker import AgentQueueConfig, TaskWorker
    from mesh.wire.connection import connect, jetstream

    conns: list[Client] = []
    started: list[TaskWorker] = []
    try:
        for n in range(workers):
            nc = await connect(url, name=f"test-worker-{n}")
            conns.append(nc)
            js = await jetstream(nc)
            served = {agent: (AgentQueueConfig(agent, **cfg), h) for agent, h in handlers.items()}
            worker = TaskWorker(nc, js, served, concurrency=concurrency, idle_poll_s=idle_poll_s,
                                name=f"w{n}")  # fmt: skip
            await worker.start()
            started.append(worker)
        yield started
    finally:
        for worker in started:
            await worker.stop(drain_timeout=5)
        for nc in conns:
            await nc.close()


def terminate(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """SIGTERM ``proc`` (a graceful stop), and SIGKILL it if it has not ended in ``timeout`` s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

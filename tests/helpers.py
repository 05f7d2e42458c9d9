"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh import names

__all__ = ["DOUBLE_AGENT_MODULE", "eventually", "eventually_sync", "finished_event", "unique"]

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

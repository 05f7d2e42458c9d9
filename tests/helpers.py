"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["DOUBLE_AGENT_MODULE", "eventually", "eventually_sync", "unique"]

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

"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import Awaitable, Callable

__all__ = ["DOUBLE_AGENT_MODULE", "eventually", "unique"]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "", every: float = 0.01
) -> None:
    """Poll ``check`` (sync or async) every ``every`` s until it is true; fail the
    test naming ``what`` after ``timeout`` seconds. The one poll-with-deadline
    of the test suite: never a sleep as synchronisation."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {what or check}")
        await asyncio.sleep(every)


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

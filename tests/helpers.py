"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import uuid

__all__ = ["DOUBLE_AGENT_MODULE", "unique"]


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

"""An agent that does nothing: what benchmarks push through the whole path."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from agents.contract import Agent, RunContext

__all__ = ["NoOp"]


class NoOpIO(BaseModel):
    model_config = {"extra": "allow"}

    echo: Any = None


class NoOp(Agent[NoOpIO, NoOpIO]):
    key = "noop"
    description = "Returns its input; used by benchmarks"
    Input = NoOpIO
    Output = NoOpIO

    async def run(self, input: NoOpIO, ctx: RunContext) -> NoOpIO:
        return input

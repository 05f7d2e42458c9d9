"""Agents for the sandboxed resilience test: the sandbox's template imports them by
name (``tests.integration.resilience.sandboxed_agents:…``)."""

from __future__ import annotations

from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.resilience import BreakerPolicy, Fallback, Resilience, RetryPolicy


class In(BaseModel):
    i: int = 0


class Out(BaseModel):
    i: int
    by: str


class Flaky(Agent[In, Out]):
    """Fails for a negative number; falls back to :class:`Backup`, then a default."""

    key = "resilient-flaky"
    Input, Output = In, Out
    resilience = Resilience(
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(min_calls=2, failure_rate=0.5, open_s=600),
        fallback=Fallback(agents=("resilient-backup",), default={"i": 0, "by": "default"}),
    )

    async def run(self, input: In, ctx: RunContext) -> Out:
        if input.i < 0:
            raise ConnectionError("upstream down")
        return Out(i=input.i, by="flaky")


class Backup(Agent[In, Out]):
    """Answers, but not for -2."""

    key = "resilient-backup"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        if input.i == -2:
            raise ValueError("no backup for -2")
        return Out(i=input.i, by="backup")

"""Agents for the dedicated-mode and sandboxed-pool tests: their worker processes and
sandbox templates import them by name
(``AF_AGENTS=tests.integration.lifecycle.dedicated_agents:…``)."""

from __future__ import annotations

import asyncio
import os
import sys

from pydantic import BaseModel

from agents.contract import Agent, RunContext


class In(BaseModel):
    i: int = 0


class Out(BaseModel):
    i: int
    pid: int  # which process ran it


class DedicatedEcho(Agent[In, Out]):
    key = "ded-echo"
    Input, Output = In, Out
    execution_mode = "dedicated"
    dedicated_workers = 2

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(i=input.i, pid=os.getpid())


class CrashesInItsOwnWorker(Agent[In, Out]):
    """Fine in the gateway; its dedicated worker process dies while loading it."""

    key = "ded-crash"
    Input, Output = In, Out
    execution_mode = "dedicated"

    def __init__(self) -> None:
        if "dedicated" in sys.argv:  # `agent-factory worker … --role dedicated`
            sys.stderr.write("loading the model: file /models/crash.bin not found\n")
            raise SystemExit(3)

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(i=input.i, pid=os.getpid())


class Sleepy(Agent[In, Out]):
    """Sleeps ``i`` seconds (the sandboxed-pool tests: a run cut at its wall clock)."""

    key = "sleepy"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        await asyncio.sleep(input.i)
        return Out(i=input.i, pid=os.getpid())


class Tokens(Agent[In, Out]):
    """Reports model tokens (``i`` input tokens); a negative ``i`` also reports a forged,
    invalid count, which the worker must ignore (the sandboxed-pool tests)."""

    key = "tokens"
    version = "3.0.1"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        ctx.report_usage("small-model", input_tokens=abs(input.i), output_tokens=2)
        if input.i < 0:
            ctx.report_usage("forged", input_tokens=input.i)
        return Out(i=input.i, pid=os.getpid())

"""Agents that call agents (``ctx.call``), for the call tests and their worker processes.

Each test makes subclasses with keys of its own (``chain``), so tests sharing one
server never take each other's tasks.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from pydantic import BaseModel

from agents.contract import Agent, RunContext


class Hop(BaseModel):
    x: int = 0


class Answer(BaseModel):
    answer: int
    path: list[str]


class Chain(Agent[Hop, Answer]):
    """Calls ``next`` with ``x + 1`` and answers its answer plus one; the last one
    (``next`` None) answers ``x * 10``. Each start is remembered in ``starts``."""

    key = "call-chain"
    Input, Output = Hop, Answer
    max_attempts = 3
    next: ClassVar[str | None] = None
    starts: ClassVar[list[str]]
    fail_first_attempt_after_call: ClassVar[bool] = False
    hold: ClassVar[asyncio.Event | None] = None  # wait for it before answering
    call_timeout_s: ClassVar[float] = 30.0
    submit_only: ClassVar[bool] = False  # ctx.submit, not ctx.call: answer the callee's run id

    async def run(self, input: Hop, ctx: RunContext) -> Answer:
        self.starts.append(ctx.run_id)
        if self.hold is not None:
            await self.hold.wait()
        if self.next is None:
            return Answer(answer=input.x * 10, path=[self.key])
        if self.submit_only:
            run_id = await ctx.submit(self.next, {"x": input.x + 1})
            if self.fail_first_attempt_after_call and ctx.attempt == 1:
                raise RuntimeError("failing after the submit: a retry must not submit again")
            return Answer(answer=0, path=[run_id])
        called = await ctx.call(self.next, {"x": input.x + 1}, timeout_s=self.call_timeout_s)
        if self.fail_first_attempt_after_call and ctx.attempt == 1:
            raise RuntimeError("failing after the call: a retry must not call again")
        return Answer(answer=called["answer"] + 1, path=[self.key, *called["path"]])


def chain(key: str, following: str | None = None, **attrs: Any) -> Chain:
    """A :class:`Chain` agent named ``key`` that calls ``following``."""
    attrs = {"key": key, "next": following, "starts": [], **attrs}
    cls = type(f"Chain_{key.replace('-', '_')}", (Chain,), attrs)
    agent: Chain = cls()
    return agent


class Relayed(BaseModel):
    to: str
    x: int = 0
    fail_first_attempt_after_call: bool = False


class CallsFromSandbox(Agent[Relayed, Answer]):
    """Runs sandboxed (importable by name): calls ``to`` with ``x`` and answers its answer plus one."""

    key = "call-from-sandbox"
    Input, Output = Relayed, Answer
    max_attempts = 3

    async def run(self, input: Relayed, ctx: RunContext) -> Answer:
        called = await ctx.call(input.to, {"x": input.x}, timeout_s=20)
        if input.fail_first_attempt_after_call and ctx.attempt == 1:
            raise RuntimeError("failing after the call: a retry must not call again")
        return Answer(answer=called["answer"] + 1, path=[self.key, *called["path"]])


# Worker processes load these by name (AF_AGENTS=tests.integration.queue.call_agents:ProcA,…).


class ProcA(Chain):
    key, next, starts = "call-proc-a", "call-proc-b", []


class ProcB(Chain):
    key, next, starts = "call-proc-b", "call-proc-c", []


class ProcC(Chain):
    key, next, starts = "call-proc-c", None, []


class KillA(Chain):
    """Its worker is killed while it waits for :class:`KillB` (redelivered after 3 s)."""

    key, next, starts = "call-kill-a", "call-kill-b", []
    ack_wait_s = 3.0


class KillB(Chain):
    key, next, starts = "call-kill-b", None, []

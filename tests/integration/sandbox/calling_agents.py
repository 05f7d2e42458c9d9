"""A sandboxed agent that makes calls (``ctx.call``), for the relay's tests."""

from __future__ import annotations

import asyncio
import json
import os
import struct
from typing import Any

from pydantic import BaseModel

from agents.contract import Agent, RunContext


class Ask(BaseModel):
    calls: int = 1
    size: int = 0  # bytes of filler in each call's input


class Said(BaseModel):
    answers: list[Any]


class ManyCalls(Agent[Ask, Said]):
    """Makes ``calls`` calls at once and answers what each gave (or raised, as text)."""

    key = "many-calls"
    Input, Output = Ask, Said

    async def run(self, input: Ask, ctx: RunContext) -> Said:
        filler = {"filler": "a" * input.size} if input.size else {}
        asked = [ctx.call("callee", {"i": i, **filler}, timeout_s=5) for i in range(input.calls)]
        results = await asyncio.gather(*asked, return_exceptions=True)
        return Said(answers=[r if isinstance(r, dict) else f"{type(r).__name__}: {r}" for r in results])


class Scribbler(Agent[Ask, Said]):
    """Writes frames that are no call (not an object, not JSON) on its call socket, then calls."""

    key = "scribbler"
    Input, Output = Ask, Said

    async def run(self, input: Ask, ctx: RunContext) -> Said:
        for body in (json.dumps([1, 2]).encode(), json.dumps("call").encode()):
            os.write(6, struct.pack(">I", len(body)) + body)
        return Said(answers=[await ctx.call("callee", {"i": 7}, timeout_s=5)])

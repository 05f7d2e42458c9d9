"""An agent that says what it does in the log (served by a worker process in the tests)."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from agents import Agent, RunContext

log = logging.getLogger("tests.chatty")


class Numbers(BaseModel):
    value: float


class Chatty(Agent[Numbers, Numbers]):
    key = "chatty"
    Input, Output = Numbers, Numbers

    async def run(self, input: Numbers, ctx: RunContext) -> Numbers:
        log.info("doubling %s", input.value)
        return Numbers(value=input.value * 2)

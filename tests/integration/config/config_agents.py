"""An agent that reads its configuration, for the config tests (loaded by worker
processes through ``AF_AGENTS=tests.integration.config.config_agents:Configured``).

Its key is ``AF_TEST_CONFIG_AGENT`` (default ``configured``), so each test's worker
process serves an agent of its own on the session's shared server."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field

from agents.contract import Agent, RunContext


class Numbers(BaseModel):
    value: float


class Scaled(BaseModel):
    value: float
    factor: float
    label: str


class Settings(BaseModel):
    factor: float = Field(default=1.0, gt=0)
    label: str = ""
    limits: dict[str, int] = Field(default_factory=dict)


class Configured(Agent[Numbers, Scaled]):
    key = os.environ.get("AF_TEST_CONFIG_AGENT", "configured")
    description = "Scales a number by its configured factor"
    Input, Output, Config = Numbers, Scaled, Settings

    async def run(self, input: Numbers, ctx: RunContext) -> Scaled:
        config: Settings = ctx.config
        return Scaled(value=input.value * config.factor, factor=config.factor, label=config.label)


def configured(key: str) -> Configured:
    """An instance under ``key`` (in-process tests: a key of each test's own)."""
    return type("Configured", (Configured,), {"key": key})()

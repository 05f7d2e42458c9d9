"""``ctx.call`` from a confined child, relayed by the template to the worker
(agents/sandbox/relay.py), with its bounds: calls in flight per invocation, frame size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents.contract import RunContext
from agents.sandbox import Sandbox, SandboxConfig, SandboxLimits
from agents.sandbox.relay import MAX_CALL_FRAME, MAX_CALLS_IN_FLIGHT

HERE = Path(__file__).parent


class Calls:
    """The worker's side of the calls, as a run's call site would make them: each answers
    after ``pause_s`` with the input's ``i``."""

    def __init__(self, pause_s: float = 0.0) -> None:
        self.pause_s = pause_s
        self.asked: list[tuple[str, Any]] = []

    async def call(self, agent: str, input: Mapping[str, Any] | BaseModel, *, timeout_s: float,
                   key: str | None, priority: int | None) -> dict[str, Any]:  # fmt: skip
        self.asked.append((agent, input))
        await asyncio.sleep(self.pause_s)
        assert isinstance(input, Mapping)
        return {"echo": input["i"]}

    async def submit(self, agent: str, input: Mapping[str, Any] | BaseModel, *, key: str | None,
                     priority: int | None) -> str:  # fmt: skip
        raise NotImplementedError


@pytest.fixture(scope="module")
async def sandbox(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sandbox]:
    root = tmp_path_factory.mktemp("sandbox-calls")
    root.chmod(0o755)
    agents = ["calling_agents:ManyCalls", "calling_agents:Scribbler"]
    config = SandboxConfig(agents=agents, sys_path=[str(HERE)], workdir_root=str(root),
                           limits=SandboxLimits(timeout_s=20), slots=2)  # fmt: skip
    async with Sandbox(config) as box:
        yield box


async def invoke(sandbox: Sandbox, calls: Calls, asked: dict[str, int]) -> list[Any]:
    result = await sandbox.invoke("many-calls", asked, RunContext(run_id="r-calls", _calls=calls))
    assert result.ok, (result.error, result.stderr)
    answers: list[Any] = result.output["answers"]
    return answers


async def test_a_confined_childs_calls_are_made_by_the_worker_and_answered(sandbox: Sandbox) -> None:
    calls = Calls()
    assert await invoke(sandbox, calls, {"calls": 3}) == [{"echo": 0}, {"echo": 1}, {"echo": 2}]
    assert [input["i"] for _, input in calls.asked] == [0, 1, 2]  # type: ignore[index]
    assert {agent for agent, _ in calls.asked} == {"callee"}


async def test_calls_past_the_limit_in_flight_are_refused_not_queued(sandbox: Sandbox) -> None:
    calls = Calls(pause_s=0.5)
    answers = await invoke(sandbox, calls, {"calls": MAX_CALLS_IN_FLIGHT + 2})
    refused = [a for a in answers if isinstance(a, str)]
    assert len(calls.asked) == MAX_CALLS_IN_FLIGHT and len(refused) == 2, answers
    assert all(f"at most {MAX_CALLS_IN_FLIGHT} calls at once" in a for a in refused)


async def test_a_call_frame_over_the_limit_closes_the_childs_calls_and_nothing_else(sandbox: Sandbox) -> None:
    calls = Calls()
    answers = await invoke(sandbox, calls, {"calls": 1, "size": MAX_CALL_FRAME + 1})
    assert calls.asked == [] and answers[0].startswith(("ConnectionError", "ConnectionResetError")), answers
    assert await invoke(sandbox, calls, {"calls": 1}) == [{"echo": 0}]  # the sandbox serves on


async def test_frames_that_are_no_call_are_dropped_and_the_calls_after_them_answered(
    sandbox: Sandbox,
) -> None:
    calls = Calls()
    result = await sandbox.invoke("scribbler", {}, RunContext(run_id="r-scribble", _calls=calls))
    assert result.ok and result.output == {"answers": [{"echo": 7}]}, (result.error, result.stderr)
    assert len(calls.asked) == 1

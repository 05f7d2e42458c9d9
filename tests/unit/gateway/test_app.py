"""The gateway's stop (gateway/app.py): its parts in reverse order, each step bounded,
all by one deadline; a part that hangs or fails holds none of the others back, and a
forced stop abandons what is left at once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import pytest

from agents.registry import Registry
from gateway import app
from gateway.app import Gateway, InProcessWorker, Parts, Shutdown
from gateway.settings import Settings


class _Part:
    """A started part: its stop is written in ``stopped``; it fails, or hangs
    swallowing every cancel (as the dlq-mover's once did), when told."""

    def __init__(self, name: str, stopped: list[str], *, hang: bool = False, fail: bool = False) -> None:
        self.name, self.stopped, self.hang, self.fail = name, stopped, hang, fail
        self.release = asyncio.Event()
        self.args: tuple[Any, ...] = ()

    async def stop(self, *args: Any) -> None:
        self.stopped.append(self.name)
        self.args = args
        if self.fail:
            raise RuntimeError("broken on the way out")
        while self.hang and not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()

    async def cleanup(self) -> None:  # the API's runner
        await self.stop()


def _gateway(stopped: list[str], said: list[str], **odd: dict[str, bool]) -> tuple[Gateway, dict[str, _Part]]:
    """A gateway whose every part has started; ``odd`` makes some hang or fail."""
    keys = ["runner", "worker", "scheduler", "maintenance", "recorder", "run_index", "queue"]
    parts = {key: _Part(key, stopped, **odd.get(key, {})) for key in keys}
    gateway = Gateway(Settings(), Registry(), Parts(worker=InProcessWorker(drain_timeout_s=3.0)), said.append,
                      **cast(dict[str, Any], parts))  # fmt: skip
    return gateway, parts


async def _stop_within(gateway: Gateway, timeout: float, seconds: float) -> list[str]:
    """``gateway.stop(timeout)``, failing (not hanging) if it takes more than ``seconds``."""
    stopping = asyncio.ensure_future(gateway.stop(timeout))
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    assert stopping in done, f"stop() not done in {seconds} s"
    return stopping.result()


async def test_parts_stop_in_reverse_order_of_their_start_the_api_first() -> None:
    stopped: list[str] = []
    gateway, parts = _gateway(stopped, [])
    assert await _stop_within(gateway, 30, 5) == []
    assert stopped == ["runner", "worker", "scheduler", "maintenance", "recorder", "run_index", "queue"]
    assert parts["worker"].args == (3.0,)  # drained for its own drain timeout


async def test_a_part_that_hangs_is_abandoned_at_its_limit_and_the_parts_after_it_still_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "STEP_TIMEOUT_S", 1.0)
    stopped: list[str] = []
    said: list[str] = []
    gateway, parts = _gateway(stopped, said, maintenance={"hang": True})
    try:
        assert await _stop_within(gateway, 30, 4) == ["the queue maintenance"]
        assert stopped[-3:] == ["recorder", "run_index", "queue"]
        assert said == ["the queue maintenance did not stop in 1 s; abandoning it"]
    finally:
        parts["maintenance"].release.set()


async def test_past_the_deadline_the_steps_left_are_abandoned_without_running() -> None:
    stopped: list[str] = []
    gateway, parts = _gateway(stopped, [], maintenance={"hang": True})
    try:
        abandoned = await _stop_within(gateway, 1.0, 4)
        assert abandoned == ["the queue maintenance", "the recorder", "the run index", "the task queue"]
        assert stopped == ["runner", "worker", "scheduler", "maintenance"]
    finally:
        parts["maintenance"].release.set()


async def test_a_part_that_fails_to_stop_is_said_and_the_stop_goes_on() -> None:
    stopped: list[str] = []
    said: list[str] = []
    gateway, _ = _gateway(stopped, said, scheduler={"fail": True})
    assert await _stop_within(gateway, 30, 5) == []
    assert stopped == ["runner", "worker", "scheduler", "maintenance", "recorder", "run_index", "queue"]
    assert said == ["the scheduler failed to stop: RuntimeError('broken on the way out'); going on"]


async def test_a_forced_stop_abandons_the_step_in_hand_and_every_step_left_at_once() -> None:
    stopped: list[str] = []
    said: list[str] = []
    hangs, after = _Part("hangs", stopped, hang=True), _Part("after", stopped)
    shutdown = Shutdown(said.append)
    running = asyncio.ensure_future(
        shutdown.run([("the hang", hangs.stop, 60), ("the next", after.stop, 60)], 120)
    )
    try:
        await asyncio.sleep(0.2)
        assert not running.done()
        shutdown.forced.set()
        done, _ = await asyncio.wait({running}, timeout=1)
        assert running in done, "a forced stop still waited for a step"
        assert shutdown.abandoned == ["the hang", "the next"]
        assert stopped == ["hangs"] and said == []
    finally:
        hangs.release.set()

"""Event delivery: inline when the conductor does not block, Faust's wait_first when it does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service

from streams.delivery import deliver


class _Consumer(Service):
    """What ``deliver`` needs of Faust's consumer: ``wait_first`` and ``suspend_flow``."""

    def __post_init__(self) -> None:
        self.suspend_flow = asyncio.Event()


async def test_an_event_the_conductor_takes_at_once_is_delivered_inline() -> None:
    consumer = _Consumer()
    delivered: list[str] = []
    tasks_before = len(asyncio.all_tasks())

    async def callback(message: Any) -> None:
        delivered.append(message)
        assert len(asyncio.all_tasks()) == tasks_before  # no task per event

    consumer.suspend_flow.set()  # a suspended flow does not stop an event that never blocks
    await deliver(consumer, callback, "e1")
    assert delivered == ["e1"]


async def test_a_blocked_event_resumes_with_what_it_waited_for() -> None:
    consumer = _Consumer()
    room: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    blocked = asyncio.Event()
    delivered: list[str] = []

    async def callback(message: Any) -> None:
        blocked.set()
        delivered.append(f"{message}:{await room}")

    delivery = asyncio.ensure_future(deliver(consumer, callback, "e1"))
    await blocked.wait()
    assert not delivery.done() and not delivered
    room.set_result("room")
    await delivery
    assert delivered == ["e1:room"]


async def test_a_blocked_event_is_abandoned_when_the_flow_is_suspended() -> None:
    consumer = _Consumer()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    blocked = asyncio.Event()
    outcome: list[str] = []

    async def callback(message: Any) -> None:
        blocked.set()
        try:
            await never
            outcome.append("delivered")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    delivery = asyncio.ensure_future(deliver(consumer, callback, "e1"))
    await blocked.wait()
    consumer.suspend_flow.set()  # a rebalance starts while the agent's buffer is full
    await asyncio.wait_for(delivery, 5)
    assert outcome == ["cancelled"]


async def test_an_error_in_a_blocked_event_reaches_the_fetcher() -> None:
    consumer = _Consumer()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    blocked = asyncio.Event()

    async def callback(message: Any) -> None:
        blocked.set()
        await gate
        raise ValueError("bad event")

    delivery = asyncio.ensure_future(deliver(consumer, callback, "e1"))
    await blocked.wait()
    gate.set_result(None)
    with pytest.raises(ValueError, match="bad event"):
        await asyncio.wait_for(delivery, 5)

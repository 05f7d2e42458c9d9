"""Wait for a run's recorded outcome (its ``execution.finished`` event).

The event stored on ``AF_EVENTS`` is the truth (:mod:`mesh.queue.outcome`): this
reads it, and in between listens on the run's event subject so a waiter wakes as
soon as the worker publishes. What it hears is only a wake-up, never believed as
the outcome: a publish the server refused (a second outcome, a stalled worker's)
reaches core subscribers too. A read every ``recheck_s`` covers a wake-up lost
to a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh import names
from mesh.queue.runs import ExecutionFinished

__all__ = ["await_outcome", "recorded_outcome"]


async def recorded_outcome(js: JetStreamContext, agent: str, run_id: str) -> ExecutionFinished | None:
    """The run's last stored finished event (None: it has not finished)."""
    try:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, run_id))
    except NotFoundError:
        return None
    return ExecutionFinished.model_validate(json.loads(raw.data or b"{}")["payload"])


async def await_outcome(
    nc: Client, js: JetStreamContext, agent: str, run_id: str, timeout_s: float, *, recheck_s: float = 1.0
) -> ExecutionFinished:
    """The run's outcome once it is recorded; ``TimeoutError`` after ``timeout_s``
    (the run goes on: waiting again later finds its outcome)."""
    woken = asyncio.Event()

    async def wake(_: Msg) -> None:
        woken.set()

    # Subscribed before the first read: an outcome stored in between still wakes us.
    sub = await nc.subscribe(names.finished_subject(agent, run_id), cb=wake)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while True:
            woken.clear()
            if (found := await recorded_outcome(js, agent, run_id)) is not None:
                return found
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"run {run_id} of {agent} has no outcome after {timeout_s:g} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(left, recheck_s))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

"""Ending tasks by a deadline when a cancel can be lost below us.

One cancel is not always enough: nats-py's flush swallows ``CancelledError``,
and Python 3.11's ``wait_for`` (under every nats-py request) returns the reply
instead when it lands together with the cancel. A stop that cancels once and
then waits without a bound can hang for ever (issue 19: Ctrl-C hung in `up`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

__all__ = ["cancel_within"]


async def cancel_within(
    tasks: Collection[asyncio.Task[Any]], deadline: float, *, every: float = 1.0
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks``, and again every ``every`` s while any still runs,
    until all have ended or ``deadline`` (event loop time) has passed.
    Returns the tasks still running then, for the caller to leave behind
    (and say so): awaiting one that ignores cancels would not end."""
    loop = asyncio.get_running_loop()
    running = {task for task in tasks if not task.done()}
    while running:
        for task in running:
            task.cancel()
        left = deadline - loop.time()
        _, running = await asyncio.wait(running, timeout=max(0.0, min(every, left)))
        if left <= every:
            break
    return running

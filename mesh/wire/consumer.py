"""The one consumer loop: pull from a durable consumer, hand batches to a handler,
and stop by a deadline without losing what was taken.

The recorder, the scheduler's relay and triggers, and the dead-letter mover run
on it (the worker has its own dispatch: many lanes, one budget).

* ``handle(msgs)`` settles each message it is given (ack, nak or term). If it
  raises, every message of the batch is nak'ed with ``retry_delay_s`` (a nak
  of one it settled already changes nothing) and the loop goes on.
* A pull that fails (NATS away) or ends at once with nothing (a consumer
  deleted, a leader change) backs off instead of spinning.
* :meth:`ConsumerLoop.stop` stops pulling, lets a batch in hand finish while
  there is time, cancels at the deadline (again each second: a cancel can be
  lost below us, :mod:`mesh.stopping`), and hands back at once (nak) the
  batch in hand and whatever a lingering pull still delivers, rather than
  leaving them to the ack wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import names
from mesh.stopping import cancel_within
from mesh.wire.puller import Puller

__all__ = ["ConsumerLoop", "each"]

log = logging.getLogger(__name__)

Handler = Callable[[list[Msg]], Awaitable[None]]


def each(handle: Callable[[Msg], Awaitable[None]], retry_delay_s: float) -> Handler:
    """A batch handler that hands messages to ``handle`` one by one; one that
    raises is nak'ed with ``retry_delay_s`` and the next goes on."""

    async def batch(msgs: list[Msg]) -> None:
        for msg in msgs:
            try:
                await handle(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: %s; retrying in %ss", msg.subject, exc, retry_delay_s)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=retry_delay_s)

    return batch


class ConsumerLoop:
    """Pull ``stream``/``consumer`` in batches of up to ``batch`` into ``handle``."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        handle: Handler,
        *,
        batch: int = 16,
        idle_s: float = 1.0,
        retry_delay_s: float = 1.0,
        api_prefix: str = names.JS_API_PREFIX,
    ) -> None:
        self.puller = Puller(nc, stream, consumer, api_prefix)
        self.consumer = consumer
        self.handle, self.batch, self.idle_s, self.retry_delay_s = handle, batch, idle_s, retry_delay_s
        self._task: asyncio.Task[None] | None = None
        self._holding: list[Msg] = []  # the batch in the handler's hands
        self._stopping = False

    async def start(self) -> None:
        await self.puller.start()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.consumer)

    async def _next(self) -> list[Msg]:
        msgs = await self.puller.take(self.batch)
        if not msgs:
            msgs = await self.puller.wait(1, self.idle_s)
            if msgs and self.batch > 1:
                msgs += await self.puller.take(self.batch - 1)
        return msgs

    async def _run(self) -> None:
        pause = 0.05
        while not self._stopping:
            started = time.monotonic()
            try:
                msgs = await self._next()
            except Exception as exc:  # NATS away: back off, keep the loop alive
                log.warning("%s: pull failed: %s", self.consumer, exc)
                msgs = []
            if msgs:
                pause = 0.05
                await self._settle(msgs)
            elif time.monotonic() - started < self.idle_s / 2:  # ended at once: don't spin
                await asyncio.sleep(pause)
                pause = min(2.0, pause * 2)

    async def _settle(self, msgs: list[Msg]) -> None:
        self._holding = msgs
        try:
            await self.handle(msgs)
        except Exception as exc:  # hand the batch back for a retry soon
            log.warning("%s: batch failed, will retry: %s", self.consumer, exc)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=self.retry_delay_s)
        finally:
            self._holding = []

    async def stop(self, deadline: float) -> None:
        """Stop by ``deadline`` (event loop time); see the module docstring."""
        self._stopping = True
        clock = asyncio.get_running_loop().time
        settle_s = self.idle_s + 0.5  # a lingering pull may still deliver until it expires
        leftovers: list[Msg] = []
        if self._task is not None:
            if self._holding:  # a batch in hand: let it finish in half the time left,
                # keeping the other half for cancelling it (a query being cancelled takes a moment)
                await asyncio.wait([self._task], timeout=max(0.0, (deadline - settle_s - clock()) / 2))
            held = list(self._holding)  # interrupted by the cancel below: not settled
            if await cancel_within([self._task], deadline - settle_s):
                log.warning("%s: consumer loop still running at the stop's deadline; abandoned",
                            self.consumer)  # fmt: skip
            else:  # (an abandoned handler may still settle its batch: leave it be)
                leftovers += held
        leftovers += await self.puller.close(settle_s=max(0.0, min(settle_s, deadline - clock())))
        for msg in leftovers:  # one settled already refuses the nak: fine
            with contextlib.suppress(Exception):
                await asyncio.wait_for(msg.nak(), 1.0)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

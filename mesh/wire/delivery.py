"""Running message callbacks cheaply: inline delivery and shared handler deadlines.

* :class:`InlineDelivery` starts a core NATS subscription's callback right in
  the connection's reader (through :mod:`mesh.wire.protocol`), keeping nats-py's
  one-at-a-time, in-order semantics and its slow-consumer limit.
* :class:`Deadlines` cancels handlers that outlive their timeout with one
  timer per subscription instead of one ``asyncio.timeout`` per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh.wire import protocol

__all__ = ["Deadlines", "InlineDelivery"]

log = logging.getLogger(__name__)

_PENDING_BYTES_LIMIT: Final = 128 * 1024 * 1024  # nats-py's default per subscription


class InlineDelivery:
    """A core NATS subscription whose messages start their callback right in the
    connection's reader: no ``asyncio.Queue`` put and get, no task switch.

    For a callback subscription nats-py parses the headers, queues the message
    and wakes one task per subscription to run the callback. This subscription
    is registered with :mod:`mesh.wire.protocol` instead, which hands it the raw frame
    from the reader; the callback's coroutine is started there, eagerly. One
    that completes without waiting (decode, check, handle, publish a reply)
    never leaves the reader; one that waits continues in a task, and messages
    arriving meanwhile wait in a backlog. Callbacks therefore still run one at a
    time, in arrival order, as with nats-py's own dispatch; past
    ``pending_msgs_limit`` waiting messages (or 128 MiB) new ones are dropped,
    like nats-py's slow-consumer rule. Callbacks must handle their own errors;
    whatever escapes is logged, it never reaches the reader.
    """

    def __init__(
        self,
        nc: Client,
        subject: str,
        callback: Callable[[Msg], Coroutine[Any, Any, None]],
        name: str,
        *,
        queue: str = "",
        pending_msgs_limit: int = 65_536,
    ) -> None:
        self._nc = nc
        self._callback = callback
        self._name = name
        self._limit = pending_msgs_limit
        # One context for every callback, as nats-py's per-subscription task had.
        self._context = contextvars.copy_context()
        self._backlog: deque[Msg] = deque()
        self._backlog_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._inbox = protocol.DirectInbox(nc, subject, self._deliver, queue=queue)
        self._closed = False
        self.dropped = 0

    async def start(self) -> None:
        await self._inbox.start()

    async def stop(self) -> None:
        """Unsubscribe, drop the backlog and cancel a callback that is still running
        (as unsubscribing a nats-py callback subscription does)."""
        self._closed = True
        await self._inbox.stop()
        self._backlog.clear()
        self._backlog_bytes = 0
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _deliver(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if self._closed:
            return
        msg = protocol.to_msg(self._nc, subject, reply, data, headers)
        if self._task is not None:  # a callback is waiting: keep arrival order
            size = len(data)
            if len(self._backlog) >= self._limit or self._backlog_bytes + size > _PENDING_BYTES_LIMIT:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning("%s: slow consumer, %d message(s) dropped", self._name, self.dropped)
                return
            self._backlog.append(msg)
            self._backlog_bytes += size
            return
        coro = self._callback(msg)
        try:
            waiting_on = self._context.run(coro.send, None)
        except StopIteration:
            return
        except (Exception, asyncio.CancelledError):
            log.exception("%s: message callback failed", self._name)
            return
        self._task = asyncio.get_running_loop().create_task(
            self._finish(coro, waiting_on), context=self._context
        )

    async def _finish(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        """Run the waiting callback to its end, then the backlog, one message at a time."""
        try:
            try:
                await _resume(coro, waiting_on)
            except Exception:
                log.exception("%s: message callback failed", self._name)
            while self._backlog and not self._closed:
                msg = self._backlog.popleft()
                self._backlog_bytes -= len(msg.data)
                try:
                    await self._callback(msg)
                except Exception:
                    log.exception("%s: message callback failed", self._name)
        finally:
            self._task = None


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting_on: Any) -> Generator[Any, Any, None]:
    """Finish ``coro``, which already ran up to its first wait (it yielded ``waiting_on``):
    hand that wait to the running task, and pass results and cancellation back in."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # cancellation (or another error) thrown in by the task
            try:
                waiting_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waiting_on = coro.send(sent)
            except StopIteration:
                return


class Deadlines:
    """Cancels handlers that outlive ``timeout_s``, with one timer for all of them.

    ``asyncio.timeout`` schedules and cancels a timer per message. Here the
    timer is armed for the oldest running handler and left alone when that
    handler finishes early; when it fires, it cancels whatever is past its
    deadline and re-arms for the next. All deadlines are ``start + timeout_s``,
    so start order is deadline order. A handler's own task is cancelled, as
    ``asyncio.timeout`` does, and :meth:`expired` tells that cancellation
    apart from any other.
    """

    def __init__(self, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._running: dict[int, tuple[asyncio.Task[Any], float, int]] = {}
        self._expired: dict[int, tuple[asyncio.Task[Any], int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, key: int) -> None:
        task = asyncio.current_task()
        assert task is not None, "Deadlines.start() runs inside a task"
        loop = task.get_loop()
        deadline = loop.time() + self._timeout
        self._running[key] = (task, deadline, task.cancelling())
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._fire)

    def finish(self, key: int) -> None:
        """The handler returned or raised; call before the next ``await``."""
        self._running.pop(key, None)

    def expired(self, key: int) -> bool:
        """On a ``CancelledError``: True if ``key``'s handler was cancelled for its
        deadline and by nothing else; that cancellation is then undone
        (``uncancel``), as ``asyncio.timeout`` does before raising ``TimeoutError``."""
        entry = self._expired.pop(key, None)
        if entry is None:
            return False
        task, cancelling = entry
        return task.uncancel() <= cancelling

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        for key, (task, deadline, cancelling) in list(self._running.items()):
            loop = task.get_loop()
            if deadline > loop.time():
                self._timer = loop.call_at(deadline, self._fire)
                return
            del self._running[key]
            if not task.done():
                self._expired[key] = (task, cancelling)
                task.cancel()

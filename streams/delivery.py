"""Faust's fetch-and-deliver loop with a synchronous fast path for each event.

Faust's ``Consumer._drain_messages`` hands every message to the conductor with
``wait_first(callback(message), suspend_flow.wait())``: four tasks (callback,
suspend flag, stopped, crashed), three cancellations and an ``asyncio.wait``
per event, so that a callback blocked on a full agent buffer, on the producer
buffer or on flow control is abandoned when the flow is suspended for a
rebalance. The callback almost never blocks: it decodes the event and puts it
on the agent's queue without yielding.

:func:`deliver` therefore runs the callback's first step inline. If it
completes, the event was delivered exactly as under ``wait_first`` (whose
callback task would have completed in its first step too, whatever the flags
say), and one ``sleep(0)`` gives the agents their turn as ``wait_first`` did
(without it the agents fall behind, their queues fill and every delivery
takes the slow path). Only if it suspends is the rest of it handed to
``wait_first``, which then behaves as Faust's loop does. The first step runs
in the fetcher's context rather than a copy of it; the conductor's callback
sets no context variables. :func:`drain_messages` is Faust's loop
(faust-streaming 0.15.3) with that one call replaced; read offsets, gaps,
``broker_commit_every`` and shutdown are unchanged.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import Message
from mode import Service

if TYPE_CHECKING:
    from faust.transport.consumer import Consumer

__all__ = ["deliver", "drain_messages"]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, Any, Any]:
    """Continue ``coro`` after it yielded ``pending`` to a caller that is not a task.

    What ``yield from`` does: the awaiting task sees ``pending`` as if ``coro``
    had yielded it, and sends or throws the outcome back into ``coro``.
    """
    while True:
        try:
            sent = yield pending
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _rest(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _resume(coro, pending)


async def deliver(consumer: Service, callback: Callable[[Message], Awaitable[Any]], message: Message) -> None:
    """``await consumer.wait_first(callback(message), consumer.suspend_flow.wait())``, cheaper."""
    coro = cast(Coroutine[Any, Any, Any], callback(message))
    try:
        pending = coro.send(None)
    except StopIteration:
        # One loop turn, as wait_first takes, so the agents keep pace.
        await asyncio.sleep(0)
        return
    await consumer.wait_first(_rest(coro, pending), consumer.suspend_flow.wait())  # type: ignore[attr-defined]


async def drain_messages(consumer: Consumer, fetcher: Service) -> None:  # pragma: no cover - Faust's loop
    """Faust's ``Consumer._drain_messages`` with :func:`deliver` for each event."""
    callback = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = cast(Service, consumer)._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set

    get_read_offset = consumer._read_offset.__getitem__
    set_read_offset = consumer._read_offset.__setitem__
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    commit_every = consumer._commit_every
    acks_enabled_for = consumer.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait = cast(AsyncIterator[tuple[Any, Message]], getmany(timeout=1.0))

            # Faust sleeps here because getmany may otherwise never release the loop.
            await consumer.sleep(0)
            if not consumer.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        if gap > 1 and r_offset and acks_enabled_for(message.topic):
                            await consumer._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None and consumer._n_acked >= commit_every:
                            consumer._n_acked = 0
                            await consumer.commit()
                        await deliver(consumer, callback, message)
                        set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)

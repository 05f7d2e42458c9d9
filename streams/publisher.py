"""Batched JetStream publishing: per-record acks, bounded in-flight, ack timeout.

One task publishes queued records in order. After waking up it lingers
``linger_s`` so that one socket write carries many records. Every record goes
out through mesh's :class:`~mesh.wire.publisher.Pipeline` (its own reply
subject under one wildcard inbox read straight off the connection, no ``Msg``
or task hop per ack), so each gets its own JetStream ack, read by
:func:`~mesh.wire.publisher.parse_puback`: the stored sequence, or the error.
The record is the pipeline's waiter, so it costs no future beyond the one its
caller holds. A record whose ack does not arrive within ``ack_timeout_s``
(nats-py waits forever) fails. At most ``max_in_flight`` records await their
acks; once ``max_backlog`` records are queued or in flight the publisher is
``congested`` and the producer holds back new records until half of that has
drained.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from faust.exceptions import ProducerSendError
from faust.types import TP, RecordMetadata
from nats.aio.client import Client

from mesh.wire import protocol
from mesh.wire.publisher import Pipeline, Reply, parse_puback

__all__ = ["Publisher"]


@dataclass(slots=True, eq=False)
class _Outgoing:
    """A record, queued or in flight; the :class:`~mesh.wire.publisher.Waiter` of its ack."""

    subject: str
    payload: bytes
    headers: dict[str, str] | None
    result: asyncio.Future[RecordMetadata]
    tp: TP
    timestamp: float | None
    publisher: Publisher

    def set_result(self, reply: Reply, /) -> None:
        publisher = self.publisher
        publisher._in_flight.discard(self)
        publisher._settled()
        try:
            offset = parse_puback(reply).seq
        except Exception:
            status = (reply.headers or {}).get("Status")
            if status:
                why = f"no stream stores {self.subject!r} (status {status})"
            else:
                why = f"publish to {self.subject!r} rejected: {reply.data!r}"
            publisher._fail(self, ProducerSendError(why))
            return
        if not self.result.done():
            tp = self.tp
            self.result.set_result(
                RecordMetadata(
                    topic=tp.topic,
                    partition=tp.partition,
                    topic_partition=tp,
                    offset=offset,
                    timestamp=self.timestamp,
                    timestamp_type=0,
                )
            )

    def set_exception(self, exc: BaseException, /) -> None:
        publisher = self.publisher
        publisher._in_flight.discard(self)
        publisher._settled()
        if isinstance(exc, TimeoutError):
            exc = ProducerSendError(f"no ack for {self.subject!r} within {publisher._ack_timeout_s}s")
        publisher._fail(self, exc)


class Publisher:
    """Publishes records to JetStream and resolves their futures with ``RecordMetadata``."""

    def __init__(
        self,
        nc: Client,
        *,
        linger_s: float = 0.005,
        ack_timeout_s: float = 10.0,
        max_in_flight: int = 4_000,
        max_backlog: int = 16_000,
    ) -> None:
        self._pipeline = Pipeline(nc, timeout=ack_timeout_s)
        self._linger_s = linger_s
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._max_backlog = max_backlog
        #: Every unsettled record is in exactly one of these two, so ``flush`` sees it.
        self._outbox: deque[_Outgoing] = deque()
        self._in_flight: set[_Outgoing] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._uncongested = asyncio.Event()
        self._uncongested.set()
        self._no_linger = False
        self._task: asyncio.Task[None] | None = None
        #: The first failure since the last :meth:`take_failure`.
        self.failure: BaseException | None = None

    async def start(self) -> None:
        await self._pipeline.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="streams-publisher")

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pipeline.stop()

    def submit(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, tp: TP, timestamp: float | None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves once the server stored it."""
        result: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(subject, payload, headers, result, tp, timestamp, self))
        self._wake.set()
        if len(self._outbox) + len(self._in_flight) >= self._max_backlog:
            self._uncongested.clear()
        return result

    @property
    def congested(self) -> bool:
        """``max_backlog`` records or more are queued or awaiting their acks."""
        return not self._uncongested.is_set()

    async def wait_uncongested(self) -> None:
        """Return once the backlog has drained to half of ``max_backlog``."""
        await self._uncongested.wait()

    def _settled(self) -> None:
        in_flight = len(self._in_flight)
        if in_flight < self._max_in_flight // 2:
            self._room.set()
        if not self._uncongested.is_set() and len(self._outbox) + in_flight < self._max_backlog // 2:
            self._uncongested.set()

    async def flush(self) -> None:
        """Publish what is queued and wait until everything submitted so far is settled."""
        pending = [o.result for o in self._outbox] + [o.result for o in self._in_flight]
        if self._outbox:
            self._no_linger = True
            self._wake.set()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def take_failure(self) -> BaseException | None:
        failure, self.failure = self.failure, None
        return failure

    async def _run(self) -> None:
        send = self._pipeline.send
        while True:
            await self._wake.wait()
            if self._linger_s and not self._no_linger:
                await asyncio.sleep(self._linger_s)
            self._no_linger = False
            self._wake.clear()
            outbox, in_flight = self._outbox, self._in_flight
            while outbox:
                if len(in_flight) >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                    continue
                item = outbox.popleft()
                in_flight.add(item)
                try:
                    headers = protocol.encode_headers(item.headers) if item.headers else None
                    await send(item.subject, item.payload, headers, item)
                except Exception as exc:
                    in_flight.discard(item)
                    self._fail(item, exc)
                    self._settled()

    def _fail(self, item: _Outgoing, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if not item.result.done():
            item.result.set_exception(
                exc if isinstance(exc, ProducerSendError) else ProducerSendError(f"publish failed: {exc!r}")
            )

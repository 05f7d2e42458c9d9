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

A record answered 503 was stored nowhere (no server of its stream took it:
on a cluster, the stream is electing a leader), and one whose ack never
came within ``ack_timeout_s`` (sent to a node that died) may or may not be
stored. Either is sent again, in order: the publisher stops sending, lets
what is in flight settle, waits (:class:`~mesh.wire.publisher.Patience`:
50 ms doubling to 1 s, at most ``patience_s`` of pauses in a row), then
sends them first, in submission order. On a compacted topic (a table's
changelog) a subject is one key of one partition and the last record per
key is the table's value, so the key's last submitted record, if it was
stored already, is sent again after them: the last value stored for a key
stays the last one submitted (while a key has records unsettled, the
publisher remembers its last one). On a plain topic a record sent again
may land after later records of its partition, and an unanswered one may
be stored twice (at least once, as on Kafka without an idempotent
producer). Once patience is spent, the records waiting fail
(``ProducerSendError``) and Faust stops the worker, as on any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass
from typing import Any

from faust.exceptions import ProducerSendError
from faust.types import TP, RecordMetadata
from nats.aio.client import Client
from nats.js.errors import NoStreamResponseError

from mesh.errors import StreamUnavailable
from mesh.wire import protocol
from mesh.wire.publisher import ELECTION_PATIENCE_S, Patience, Pipeline, Reply, parse_puback

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
    number: int  # submission order
    unanswered: bool = False  # its last send timed out (it may be stored)

    def set_result(self, reply: Reply, /) -> None:
        publisher = self.publisher
        publisher._in_flight.discard(self)
        try:
            offset = parse_puback(reply).seq
        except NoStreamResponseError:  # stored nowhere: sent again, in order
            self.unanswered = False
            publisher._unstored.append(self)
            publisher._settled()
            return
        except Exception:
            if publisher._keys:  # records of a key unsettled (a compacted topic)
                publisher._done(self)
            publisher._settled()
            status = (reply.headers or {}).get("Status")
            if status:
                why = f"no stream stores {self.subject!r} (status {status})"
            else:
                why = f"publish to {self.subject!r} rejected: {reply.data!r}"
            publisher._fail(self, ProducerSendError(why))
            return
        if publisher._keys:  # records of a key unsettled (a compacted topic)
            publisher._done(self)
        publisher._settled()
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
        if isinstance(exc, TimeoutError) and publisher._patience_s > 0:  # maybe stored: sent again, in order
            self.unanswered = True
            publisher._unstored.append(self)
            publisher._settled()
            return
        if publisher._keys:  # records of a key unsettled (a compacted topic)
            publisher._done(self)
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
        patience_s: float = ELECTION_PATIENCE_S,
    ) -> None:
        self._pipeline = Pipeline(nc, timeout=ack_timeout_s)
        self._linger_s = linger_s
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._max_backlog = max_backlog
        #: Every unsettled record is in exactly one of these two (or in ``_unstored``), so ``flush`` sees it.
        self._outbox: deque[_Outgoing] = deque()
        self._in_flight: set[_Outgoing] = set()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._uncongested = asyncio.Event()
        self._uncongested.set()
        self._no_linger = False
        self._numbers = itertools.count()
        #: Records answered 503 or never answered, to send again (see the module doc).
        self._unstored: list[_Outgoing] = []
        #: Per key subject with records unsettled: how many, and the last one submitted.
        self._keys: dict[str, list[Any]] = {}
        self._drained: asyncio.Future[None] | None = None  # made by _send_again to wait for in-flight
        self._patience: Patience | None = None
        self._patience_s = patience_s
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
        item = _Outgoing(subject, payload, headers, result, tp, timestamp, self, next(self._numbers))
        self._outbox.append(item)
        if subject.count(".") == 3:  # naming.is_key_subject, inlined: one call less per record
            entry = self._keys.get(subject)
            if entry is None:
                self._keys[subject] = [1, item]
            else:
                entry[0] += 1
                entry[1] = item
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
        if not in_flight and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._unstored:
            self._wake.set()  # the run loop sends them again
        if not self._uncongested.is_set() and len(self._outbox) + in_flight < self._max_backlog // 2:
            self._uncongested.set()

    async def flush(self) -> None:
        """Publish what is queued and wait until everything submitted so far is settled
        (stored, or failed: a record answered 503 is sent again first)."""
        pending = [o.result for items in (self._outbox, self._in_flight, self._unstored) for o in items]
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
            if self._unstored:
                await self._send_again()
            elif self._patience is not None and not in_flight:
                self._patience = None  # what was sent again is stored: patience starts over next time
            while outbox:
                if self._unstored:
                    break  # a 503: stop sending until they are queued again
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
                    self._done(item)
                    self._fail(item, exc)
                    self._settled()

    async def _send_again(self) -> None:
        """Queue the records answered 503 (or never answered) first, in order,
        once nothing is in flight and after a pause; or fail them once
        patience runs out."""
        if self._in_flight:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            self._drained = None
        self._patience = self._patience or Patience(self._patience_s)
        try:  # they stay in _unstored meanwhile, where flush() sees them
            await self._patience.pause(f"{len(self._unstored)} record(s) for {self._unstored[0].subject!r}")
        except StreamUnavailable as exc:
            self._patience = None
            unstored, self._unstored = self._unstored, []
            for item in unstored:
                self._done(item)
                why = (
                    f"no ack for {item.subject!r} within {self._ack_timeout_s}s"
                    if item.unanswered
                    else str(exc)
                )
                self._fail(item, ProducerSendError(why))
            return
        unstored, self._unstored = self._unstored, []
        # A key's last record, stored already, goes again after an earlier one sent again.
        again: dict[int, _Outgoing] = {}
        for item in unstored:
            entry = self._keys.get(item.subject)
            if entry is not None:
                latest = entry[1]
                if latest.number > item.number and latest.result.done() and not latest.result.exception():
                    if latest.number not in again:
                        entry[0] += 1  # unsettled again until its second ack
                    again[latest.number] = latest
        self._outbox.extendleft(
            sorted([*unstored, *again.values()], key=lambda item: item.number, reverse=True)
        )
        self._wake.set()

    def _done(self, item: _Outgoing) -> None:
        """``item`` is settled for good: its key (if any) has one unsettled record less."""
        entry = self._keys.get(item.subject)
        if entry is not None:
            entry[0] -= 1
            if not entry[0]:
                del self._keys[item.subject]

    def _fail(self, item: _Outgoing, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if not item.result.done():
            item.result.set_exception(
                exc if isinstance(exc, ProducerSendError) else ProducerSendError(f"publish failed: {exc!r}")
            )

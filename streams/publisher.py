"""Batched JetStream publishing: per-record acks, bounded in-flight, ack timeout.

One task publishes queued records in order. After waking up it lingers
``linger_s`` so that one socket write carries many records. Every record is
published with its own reply subject under one wildcard subscription, so each
gets its own JetStream ack (stored sequence, or error) without nats-py's
per-publish semaphore, NUID and ``PubAck`` dataclass. A record whose ack does
not arrive within ``ack_timeout_s`` (nats-py waits forever) fails. At most
``max_in_flight`` records await their acks; once ``max_backlog`` records are
queued or in flight the publisher is ``congested`` and the producer holds
back new records until half of that has drained.

Acks are read straight off the connection (:class:`mesh.wire.protocol.DirectInbox`, no
``Msg`` or task hop per ack) and publishes are written with pre-encoded
headers (:func:`mesh.wire.protocol.publish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from dataclasses import dataclass

from faust.exceptions import ProducerSendError
from faust.types import TP, RecordMetadata
from nats.aio.client import Client

from mesh.wire import protocol

__all__ = ["Publisher"]

#: The stored sequence in a JetStream publish ack, ``{"stream":"...","seq":42}``.
_ACK_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')


@dataclass(slots=True)
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str] | None
    result: asyncio.Future[RecordMetadata]
    tp: TP
    timestamp: float | None
    sent_at: float = 0.0


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
        self._nc = nc
        self._linger_s = linger_s
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._max_backlog = max_backlog
        #: Every unsettled record is in exactly one of these two, so ``flush`` sees it.
        self._outbox: deque[_Outgoing] = deque()
        self._in_flight: dict[int, _Outgoing] = {}
        self._next_token = 0
        self._prefix = ""
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._uncongested = asyncio.Event()
        self._uncongested.set()
        self._no_linger = False
        self._inbox: protocol.DirectInbox | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: The first failure since the last :meth:`take_failure`.
        self.failure: BaseException | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._inbox = protocol.DirectInbox(self._nc, self._prefix + ".*", self._on_reply)
        await self._inbox.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(), name="streams-publisher"),
            loop.create_task(self._expire_loop(), name="streams-ack-timeouts"),
        ]

    async def stop(self) -> None:
        await self.flush()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._inbox is not None:
            with contextlib.suppress(Exception):
                await self._inbox.stop()
            self._inbox = None

    def submit(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, tp: TP, timestamp: float | None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves once the server stored it."""
        result: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(subject, payload, headers, result, tp, timestamp))
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
        pending = [o.result for o in self._outbox] + [o.result for o in self._in_flight.values()]
        if self._outbox:
            self._no_linger = True
            self._wake.set()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def take_failure(self) -> BaseException | None:
        failure, self.failure = self.failure, None
        return failure

    async def _run(self) -> None:
        nc = self._nc
        prefix = self._prefix + "."
        while True:
            await self._wake.wait()
            if self._linger_s and not self._no_linger:
                await asyncio.sleep(self._linger_s)
            self._no_linger = False
            self._wake.clear()
            outbox, in_flight = self._outbox, self._in_flight
            now = time.monotonic()
            while outbox:
                if len(in_flight) >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                    now = time.monotonic()
                    continue
                item = outbox.popleft()
                token = self._next_token
                self._next_token += 1
                item.sent_at = now
                in_flight[token] = item
                try:
                    headers = protocol.encode_headers(item.headers) if item.headers else None
                    await protocol.publish(nc, item.subject, item.payload, f"{prefix}{token}", headers)
                except Exception as exc:
                    in_flight.pop(token, None)
                    self._fail(item, exc)
                    self._settled()

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        item = self._in_flight.pop(int(subject[len(self._prefix) + 1 :]), None)
        if item is None:
            return  # timed out already
        self._settled()
        status = protocol.parse_headers(headers).get("Status") if headers else None
        if status:
            self._fail(item, ProducerSendError(f"no stream stores {item.subject!r} (status {status})"))
            return
        match = _ACK_SEQ.search(data) if b'"error"' not in data else None
        if match is None:
            self._fail(item, ProducerSendError(f"publish to {item.subject!r} rejected: {data!r}"))
            return
        if not item.result.done():
            item.result.set_result(
                RecordMetadata(
                    topic=item.tp.topic,
                    partition=item.tp.partition,
                    topic_partition=item.tp,
                    offset=int(match[1]),
                    timestamp=item.timestamp,
                    timestamp_type=0,
                )
            )

    def _fail(self, item: _Outgoing, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if not item.result.done():
            item.result.set_exception(
                exc if isinstance(exc, ProducerSendError) else ProducerSendError(f"publish failed: {exc!r}")
            )

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._ack_timeout_s / 2))
            deadline = time.monotonic() - self._ack_timeout_s
            while self._in_flight:
                token = next(iter(self._in_flight))
                item = self._in_flight[token]
                if item.sent_at > deadline:
                    break
                del self._in_flight[token]
                self._fail(
                    item, ProducerSendError(f"no ack for {item.subject!r} within {self._ack_timeout_s}s")
                )
            self._settled()

"""Batched JetStream publishing: per-record acks, bounded in-flight, ack timeout.

One task publishes queued records in order. After waking up it lingers
``linger_s`` so that one socket write carries many records. Every record is
published with its own reply subject under one wildcard subscription, so each
gets its own JetStream ack (stored sequence, or error) without nats-py's
per-publish semaphore, NUID and ``PubAck`` dataclass. A record whose ack does
not arrive within ``ack_timeout_s`` (nats-py waits forever) fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

from faust.exceptions import ProducerSendError
from faust.types import TP, RecordMetadata
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["Publisher"]


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
    ) -> None:
        self._nc = nc
        self._linger_s = linger_s
        self._ack_timeout_s = ack_timeout_s
        self._max_in_flight = max_in_flight
        self._outbox: list[_Outgoing] = []
        self._in_flight: dict[str, _Outgoing] = {}
        self._next_token = 0
        self._prefix = ""
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._no_linger = False
        self._sub: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: The first failure since the last :meth:`take_failure`.
        self.failure: BaseException | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_reply)
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
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def submit(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, tp: TP, timestamp: float | None
    ) -> asyncio.Future[RecordMetadata]:
        """Queue one record; the future resolves once the server stored it."""
        result: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(subject, payload, headers, result, tp, timestamp))
        self._wake.set()
        return result

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
        while True:
            await self._wake.wait()
            if self._linger_s and not self._no_linger:
                await asyncio.sleep(self._linger_s)
            self._no_linger = False
            self._wake.clear()
            batch, self._outbox = self._outbox, []
            now = time.monotonic()
            for item in batch:
                if len(self._in_flight) >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                token = str(self._next_token)
                self._next_token += 1
                item.sent_at = now
                self._in_flight[token] = item
                try:
                    await nc.publish(
                        item.subject, item.payload, reply=f"{self._prefix}.{token}", headers=item.headers
                    )
                except Exception as exc:
                    self._in_flight.pop(token, None)
                    self._fail(item, exc)

    async def _on_reply(self, msg: Msg) -> None:
        item = self._in_flight.pop(msg.subject[len(self._prefix) + 1 :], None)
        if item is None:
            return  # timed out already
        if len(self._in_flight) < self._max_in_flight // 2:
            self._room.set()
        if msg.headers and msg.headers.get("Status"):
            self._fail(
                item, ProducerSendError(f"no stream stores {item.subject!r} (status {msg.headers['Status']})")
            )
            return
        try:
            ack = json.loads(msg.data)
            seq = int(ack["seq"])
        except Exception:
            self._fail(item, ProducerSendError(f"publish to {item.subject!r} rejected: {msg.data!r}"))
            return
        if not item.result.done():
            item.result.set_result(
                RecordMetadata(
                    topic=item.tp.topic,
                    partition=item.tp.partition,
                    topic_partition=item.tp,
                    offset=seq,
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
            if len(self._in_flight) < self._max_in_flight // 2:
                self._room.set()

"""Faust producer over JetStream: ``send`` returns a future of ``RecordMetadata``.

Records go to the stream of their partition. The partition is the caller's, or
Faust's default partitioner applied to the key (murmur2, as aiokafka does), so
the partition of a key is the same as on Kafka. A record's offset is the stream
sequence from the server's publish ack, the same space the consumer reads, so
a table's persisted changelog offset is meaningful to recovery.

Records are queued and published by one task that lingers ``linger_ms``
(default 5 ms) after waking up, so one socket write carries many records;
each record still gets its own publish ack.

Guarantee: a future resolves only once the server stored the record (file
storage). A failed publish, or one not acknowledged within ``ack_timeout``
(default 10 s; nats-py itself never gives up), fails its future, and the
next :meth:`flush` raises
:class:`~faust.exceptions.ProducerSendError`, so the consumer does not commit
past an event whose output was lost (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

from faust.exceptions import ProducerSendError
from faust.transport import base
from faust.types import TP, RecordMetadata
from faust.types.core import HeadersArg
from mode.utils.times import Seconds, want_seconds
from nats.js.api import PubAck

from streams import naming
from streams.partitioner import partition_for
from streams.records import encode_headers
from streams.topics import TopicSpec

__all__ = ["Producer"]


def _expire(ack: asyncio.Future[Any]) -> None:
    if not ack.done():
        ack.cancel()


@dataclass(slots=True)
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str] | None
    result: asyncio.Future[RecordMetadata]
    tp: TP
    timestamp: float | None


class Producer(base.Producer):
    """Publishes Faust records to JetStream with async acks."""

    def __post_init__(self) -> None:
        self._conn: Any = None
        self._pending: set[asyncio.Future[Any]] = set()
        self._failure: BaseException | None = None
        self._outbox: list[_Outgoing] = []
        self._outbox_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._publisher_task: asyncio.Task[None] | None = None
        settings = getattr(self.transport, "settings", None)
        self._linger_s = settings.linger_s if settings is not None else 0.0
        self._ack_timeout_s = settings.ack_timeout_s if settings is not None else 10.0

    async def on_start(self) -> None:
        await super().on_start()
        await self._connection()

    async def on_stop(self) -> None:
        await super().on_stop()
        if self._conn is not None:
            await self._wait_pending()
            task, self._publisher_task = self._publisher_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._conn = None
            await self.transport.release()  # type: ignore[attr-defined]

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self.transport.acquire()  # type: ignore[attr-defined]
        if self._publisher_task is None:
            self._publisher_task = asyncio.get_running_loop().create_task(
                self._publisher(), name="streams-publisher"
            )
        return self._conn

    async def _spec(self, topic: str) -> TopicSpec:
        conn = await self._connection()
        spec = conn.topics.cached(topic) or await conn.topics.describe(topic)
        if spec is None:
            conf = self.app.conf
            if not conf.topic_allow_declare:
                raise ProducerSendError(f"topic {topic!r} does not exist")
            spec = await conn.topics.declare(
                topic, conf.topic_partitions, replicas=conf.topic_replication_factor
            )
        return cast(TopicSpec, spec)

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> Awaitable[RecordMetadata]:
        """Queue one record; the returned future resolves when the server stored it."""
        spec = await self._spec(topic)
        if partition is None:
            partition = partition_for(key, spec.partitions, self.partitioner)
        if spec.compacting and key is not None:
            subject = naming.key_subject(topic, partition, key)
        else:
            subject = naming.partition_subject(topic, partition)
        hdrs = encode_headers(key, value, timestamp, cast(Any, headers))
        result: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        self._outbox.append(_Outgoing(subject, value or b"", hdrs, result, TP(topic, partition), timestamp))
        self._outbox_ready.set()
        return result

    async def _publisher(self) -> None:
        """Publish the outbox in batches: after a wake-up, linger briefly so that one
        socket write carries many records (acks still arrive per record)."""
        while True:
            await self._outbox_ready.wait()
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            js = self._conn.js
            loop = asyncio.get_running_loop()
            for item in batch:
                try:
                    ack = await js.publish_async(item.subject, item.payload, headers=item.headers)
                except Exception as exc:
                    self._failure = exc
                    if not item.result.done():
                        item.result.set_exception(ProducerSendError(f"cannot publish: {exc!r}"))
                    continue
                self._pending.add(ack)
                ack.add_done_callback(partial(self._on_ack, item))
                # nats-py never times out a publish ack: a record lost in flight
                # (server restart) would block flush() and every commit forever.
                loop.call_later(self._ack_timeout_s, _expire, ack)
            self._drained.set()

    def _on_ack(self, item: _Outgoing, fut: asyncio.Future[PubAck]) -> None:
        self._pending.discard(fut)
        result = item.result
        if result.done():
            return
        if fut.cancelled():
            exc: BaseException | None = TimeoutError(f"no ack within {self._ack_timeout_s}s")
        else:
            exc = fut.exception()
        if exc is not None:
            self._failure = exc
            result.set_exception(ProducerSendError(f"publish to {item.tp.topic!r} failed: {exc!r}"))
            return
        result.set_result(
            RecordMetadata(
                topic=item.tp.topic,
                partition=item.tp.partition,
                topic_partition=item.tp,
                offset=fut.result().seq,
                timestamp=item.timestamp,
                timestamp_type=0,
            )
        )

    async def send_and_wait(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
        *,
        transactional_id: str | None = None,
    ) -> RecordMetadata:
        fut = await self.send(topic, key, value, partition, timestamp, headers)
        return await fut

    async def _wait_pending(self) -> None:
        while self._outbox:
            self._drained.clear()
            self._outbox_ready.set()
            await self._drained.wait()
        pending = list(self._pending)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def flush(self) -> None:
        """Send everything buffered and wait for the server's acks of all sent so far.

        Raises :class:`ProducerSendError` if any publish failed since the last flush.
        """
        await self.buffer.flush()
        await self._wait_pending()
        failure, self._failure = self._failure, None
        if failure is not None:
            raise ProducerSendError(f"a publish failed: {failure!r}") from failure

    async def create_topic(
        self,
        topic: str,
        partitions: int,
        replication: int,
        *,
        config: Mapping[str, Any] | None = None,
        timeout: Seconds = 30.0,
        retention: Seconds | None = None,
        compacting: bool | None = None,
        deleting: bool | None = None,
        ensure_created: bool = False,
    ) -> None:
        conn = await self._connection()
        await conn.topics.declare(
            topic,
            partitions,
            replicas=replication,
            retention_s=want_seconds(retention) if retention else None,
            compacting=bool(compacting),
            deleting=deleting,
        )

    def key_partition(self, topic: str, key: bytes) -> TP:
        spec = self._conn.topics.cached(topic) if self._conn is not None else None
        partitions = spec.partitions if spec is not None else self.app.conf.topic_partitions
        return TP(topic, partition_for(key, partitions, self.partitioner))

    def supports_headers(self) -> bool:
        return True

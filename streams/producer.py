"""Faust producer over JetStream: ``send`` returns a future of ``RecordMetadata``.

Records go to the stream of their partition. The partition is the caller's, or
Faust's default partitioner applied to the key (murmur2, as aiokafka does), so
the partition of a key is the same as on Kafka. A record's offset is the stream
sequence from the server's publish ack, the same space the consumer reads, so
a table's persisted changelog offset is meaningful to recovery.

Records are queued and published by one task that lingers ``linger_ms``
(default 5 ms) after waking up, so one socket write carries many records;
each record still gets its own publish ack.

``send_soon`` (table changelogs) hands a record to the publisher directly
instead of through Faust's ``ProducerBuffer``: the buffer's task sends one
record per three event-loop turns (``maybe_start_producer`` is a ``stampede``
wrapper with three ``sleep(0)``), and under load the agent fills it faster than
that, so the conductor stalls in ``wait_until_ebb``. Records keep their order:
the direct path is taken only while the buffer is empty. Back-pressure: while
the publisher is congested, ``send`` waits and ``send_soon`` uses Faust's
buffer, so a slow or unreachable server stalls the agents instead of growing
memory.

Guarantee: a future resolves only once the server stored the record (file
storage). A failed publish, or one not acknowledged within ``ack_timeout``
(default 10 s; nats-py itself never gives up), fails its future, and the
next :meth:`flush` raises
:class:`~faust.exceptions.ProducerSendError`, so the consumer does not commit
past an event whose output was lost (at-least-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from functools import partial
from typing import Any, cast

from faust.exceptions import ProducerSendError
from faust.topics import Topic
from faust.transport import base
from faust.types import TP, RecordMetadata
from faust.types.core import HeadersArg
from faust.types.tuples import FutureMessage
from mode.utils.times import Seconds, want_seconds

from streams import naming
from streams.partitioner import partition_for
from streams.publisher import Publisher
from streams.records import encode_headers
from streams.topics import TopicSpec

__all__ = ["Producer"]


def _size(data: bytes | None) -> int:
    return len(data) if isinstance(data, bytes) else 0


class Producer(base.Producer):
    """Publishes Faust records to JetStream with async acks."""

    def __post_init__(self) -> None:
        self._conn: Any = None
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()

    async def on_start(self) -> None:
        await super().on_start()
        await self._connection()

    async def on_stop(self) -> None:
        await super().on_stop()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.stop()
        if self._conn is not None:
            self._conn = None
            await self.transport.release()  # type: ignore[attr-defined]

    async def _connection(self) -> Any:
        if self._publisher is None:
            async with self._lock:
                if self._publisher is None:
                    self._conn = await self.transport.acquire()  # type: ignore[attr-defined]
                    settings = self.transport.settings  # type: ignore[attr-defined]
                    publisher = Publisher(
                        self._conn.nc, linger_s=settings.linger_s, ack_timeout_s=settings.ack_timeout_s
                    )
                    await publisher.start()
                    self._publisher = publisher
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
        publisher = self._publisher
        if publisher is not None and publisher.congested:
            await publisher.wait_uncongested()
        return self._submit(spec, topic, key, value, partition, timestamp, headers)

    def _submit(
        self,
        spec: TopicSpec,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: HeadersArg | None,
    ) -> asyncio.Future[RecordMetadata]:
        if partition is None:
            partition = partition_for(key, spec.partitions, self.partitioner)
        if spec.compacting and key is not None:
            subject = naming.key_subject(topic, partition, key)
        else:
            subject = naming.partition_subject(topic, partition)
        hdrs = encode_headers(key, value, timestamp, cast(Any, headers))
        assert self._publisher is not None
        return self._publisher.submit(subject, value or b"", hdrs, TP(topic, partition), timestamp)

    def send_soon(self, fut: FutureMessage) -> None:
        """Publish a record of ``Topic.send_soon`` (table changelogs) without a detour.

        Does what Faust's buffer task does for it (``Topic.publish_message(fut,
        wait=False)``: send-initiated sensor, send, then ``Topic._on_published``
        on the ack), minus the three event-loop turns per record of its
        ``maybe_start_producer``. Falls back to Faust's buffer while it holds
        records (ordering), while the publisher is congested (the buffer then
        fills and Faust's ``wait_until_ebb`` holds the agents back), before the
        producer is connected, for a topic not described yet and for channels
        that publish their own way.
        """
        message = fut.message
        channel = message.channel
        conn = self._conn
        if not (
            conn is not None
            and self._publisher is not None
            and not self._publisher.congested
            and not self.buffer.size
            and isinstance(channel, Topic)
            and type(channel).publish_message is Topic.publish_message
            and not channel.pattern
            and len(channel.topics) == 1
            and not self.app.in_transaction
        ):
            self.buffer.put(fut)
            return
        name = channel.topics[0]
        spec = conn.topics.cached(name)
        if spec is None:
            self.buffer.put(fut)
            return
        key = cast(bytes | None, message.key)
        value = cast(bytes | None, message.value)
        state = self.app.sensors.on_send_initiated(
            self, name, message=message, keysize=_size(key), valsize=_size(value)
        )
        result = self._submit(spec, name, key, value, message.partition, message.timestamp, message.headers)
        result.add_done_callback(partial(channel._on_published, message=fut, state=state, producer=self))

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

    async def flush(self) -> None:
        """Send what is buffered now and wait for the server's acks of all sent so far.

        Only the records buffered when the flush starts are waited for (Faust's
        own ``buffer.flush()`` drains until the buffer is empty, which under load
        takes seconds and delays every commit). Raises
        :class:`ProducerSendError` if any publish failed since the last flush.
        """
        if self.buffer.size:
            await self.buffer.flush_atmost(self.buffer.size)
        publisher = self._publisher
        if publisher is None:
            return
        await publisher.flush()
        failure = publisher.take_failure()
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

"""Topic catalogue: create topics as one JetStream stream per partition, and answer
partition counts, highwaters and earliest offsets.

Offsets are stream sequences. Because every partition has its own stream, the
offsets of a plain topic are contiguous (1, 2, 3, ...). Compacted topics and
topics with retention lose messages at the front or in the interior; Faust
tolerates those gaps. The two positions Faust relies on are:

* ``highwater = last_seq + 1``: the newest message always survives compaction
  (it is the newest on its own subject) and age retention removes from the front,
  so the message at ``highwater - 1`` exists whenever the stream is non-empty, and
  table recovery (which waits for exactly that offset) terminates.
* ``earliest = first_seq``, or ``last_seq + 1`` when the stream is empty, so an
  empty partition reports ``earliest == highwater`` (nothing to recover).

Each topic's partition count and settings are recorded in the ``faust-topics``
KV bucket: declaring an existing topic again keeps its partition count (as Kafka
does), and ``topic_partitions`` is answered from a local cache.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

from faust.types import TP
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamSource
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from mesh.provision import placed
from streams import naming
from streams.errors import TopicNotFound

__all__ = ["TopicRegistry", "TopicSpec"]

log = logging.getLogger(__name__)

_STREAM_NAME_IN_USE = 10058


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What ``faust-topics`` records about a topic."""

    partitions: int
    compacting: bool = False
    retention_s: float | None = None
    replicas: int = 1
    sourced: bool = False  # its partitions copy another stream (server-side); nobody publishes to it


@dataclass(frozen=True, slots=True)
class PartitionBounds:
    """``earliest``: first readable offset; ``highwater``: the next offset to be written."""

    earliest: int
    highwater: int


class TopicRegistry:
    """Creates and describes topics; caches what it learned (topics never shrink)."""

    def __init__(self, js: JetStreamContext, replicas: int = 1) -> None:
        """``replicas``: of the ``faust-topics`` bucket, if this registry creates it."""
        self._js = js
        self._replicas = max(1, replicas)
        self._kv: KeyValue | None = None
        self._specs: dict[str, TopicSpec] = {}
        self._lock = asyncio.Lock()

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            async with self._lock:
                if self._kv is None:
                    try:
                        self._kv = await self._js.key_value(naming.TOPICS_BUCKET)
                    except (NotFoundError, BadRequestError):
                        self._kv = await placed(
                            lambda: self._js.create_key_value(
                                bucket=naming.TOPICS_BUCKET,
                                history=1,
                                storage=StorageType.FILE,
                                replicas=self._replicas,
                            ),
                            "the topics bucket",
                        )
        return self._kv

    def cached(self, topic: str) -> TopicSpec | None:
        return self._specs.get(topic)

    async def describe(self, topic: str) -> TopicSpec | None:
        """The topic's spec, or ``None`` if no one declared it yet."""
        spec = self._specs.get(topic)
        if spec is not None:
            return spec
        kv = await self._bucket()
        try:
            entry = await kv.get(naming.escape(topic))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        spec = TopicSpec(**json.loads(entry.value))
        self._specs[topic] = spec
        return spec

    async def require(self, topic: str) -> TopicSpec:
        spec = await self.describe(topic)
        if spec is None:
            raise TopicNotFound(f"topic {topic!r} does not exist (declare it first)")
        return spec

    async def declare(
        self,
        topic: str,
        partitions: int,
        *,
        replicas: int = 1,
        retention_s: float | None = None,
        compacting: bool = False,
        deleting: bool | None = None,
        source: Callable[[int], StreamSource] | None = None,
    ) -> TopicSpec:
        """Create ``topic`` with ``partitions`` streams unless it exists; return its spec.

        Compaction keeps the newest record per key (``max_msgs_per_subject=1`` over
        one subject per key). ``retention_s`` becomes the streams' ``max_age``
        (for a compacted topic only when ``deleting`` is also set, as with
        Kafka's ``cleanup.policy=compact,delete``). ``source``: each partition
        is filled by the server from ``source(partition)`` (a stream of the
        platform, e.g. ``AF_EXECUTIONS``) and has no subjects of its own; the
        records are that stream's messages as they are (no key, the payload
        as the value).
        """
        existing = await self.describe(topic)
        if existing is not None:
            return existing
        max_age = retention_s if retention_s and (deleting or not compacting) else None
        spec = TopicSpec(
            partitions=partitions,
            compacting=bool(compacting),
            retention_s=max_age,
            replicas=max(1, replicas),
            sourced=source is not None,
        )
        await asyncio.gather(*(self._create_stream(topic, p, spec, source) for p in range(partitions)))
        kv = await self._bucket()
        try:
            await kv.create(naming.escape(topic), json.dumps(asdict(spec)).encode())
        except KeyWrongLastSequenceError:
            # Declared concurrently by another worker: theirs wins, as on Kafka.
            self._specs.pop(topic, None)
            return await self.require(topic)
        self._specs[topic] = spec
        return spec

    async def _create_stream(
        self, topic: str, partition: int, spec: TopicSpec, source: Callable[[int], StreamSource] | None
    ) -> None:
        config = StreamConfig(
            name=naming.stream_name(topic, partition),
            subjects=None if source else naming.stream_subjects(topic, partition, spec.compacting),
            sources=[source(partition)] if source else None,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=spec.replicas,
            max_msgs_per_subject=1 if spec.compacting else -1,
            max_age=spec.retention_s or 0,
            allow_direct=True,
        )
        try:
            await placed(lambda: self._js.add_stream(config), f"topic stream {config.name}")
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            log.info("stream %s exists with other settings; kept as is", config.name)

    async def bounds(self, tps: Iterable[TP]) -> dict[TP, PartitionBounds]:
        """Earliest offset and highwater of each partition (one stream-info each)."""
        tps = list(tps)
        infos = await asyncio.gather(
            *(self._js.stream_info(naming.stream_name(tp.topic, tp.partition)) for tp in tps)
        )
        out: dict[TP, PartitionBounds] = {}
        for tp, info in zip(tps, infos, strict=True):
            state = info.state
            highwater = state.last_seq + 1
            earliest = state.first_seq if state.messages else highwater
            out[tp] = PartitionBounds(earliest=earliest, highwater=highwater)
        return out

    def partition_counts(self) -> Mapping[str, int]:
        return {topic: spec.partitions for topic, spec in self._specs.items()}

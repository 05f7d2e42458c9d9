"""Faust consumer over JetStream.

* Fetching: one :class:`~streams.reader.PartitionReader` per assigned partition
  (active and standby changelog partitions alike); ``getmany`` drains the
  readers of the active partitions. Offsets are stream sequences.
* Positions: ``seek`` re-creates the partition's reader at the offset;
  ``position`` is the next offset ``getmany`` will return.
* Commits: next-offset-to-read per partition into the group's KV bucket
  (:mod:`streams.offsets`), tagged with the generation the partitions were
  assigned in. Fenced: a member absent from the newest generation it knows of
  commits nothing, and the server-side compare-and-set keeps any commit, even
  a late one from a stalled member, from overwriting a newer generation's.
* Group: :mod:`streams.membership` runs the heartbeats and leader election; this
  module turns each new generation into Faust's rebalance sequence:
  ``app.on_rebalance_start()`` -> ``on_partitions_revoked(everything held)`` ->
  release + barrier -> ``assignor.on_assignment`` ->
  ``app.consumer_generation_id = g`` -> ``on_partitions_assigned(new, g)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

from faust.transport import base
from faust.transport.consumer import CONSUMER_PARTITIONS_REVOKED
from faust.types import TP, ConsumerMessage
from mode import Service
from mode.utils.times import Seconds, want_seconds
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.assignment import apply_assignment, assign, member_metadata
from streams.delivery import drain_messages
from streams.membership import Generation, GroupMembership
from streams.offsets import OffsetStore
from streams.partitioner import partition_for
from streams.reader import PartitionReader, Record
from streams.records import decode_header_block

__all__ = ["LAG", "Consumer"]

log = logging.getLogger(__name__)


class _Lag(Collector):
    """``af_processor_lag_messages{stream}``: per assigned partition, the records this
    process has not taken yet (the highwater its deliveries report, minus its position).
    Read at scrape time, from the scraping thread: a dict changed meanwhile is read again."""

    def __init__(self) -> None:
        self.consumers: weakref.WeakSet[Consumer] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        lag: dict[str, int] = {}
        for consumer in list(self.consumers):
            for _ in range(3):
                try:
                    readers, assigned = list(consumer._readers.items()), set(consumer._assigned)
                    break
                except RuntimeError:  # changed size while listed
                    continue
            else:
                continue
            for tp, reader in readers:
                if tp in assigned and reader.started:
                    behind = max(0, reader.highwater_hint - reader.position())
                    lag[reader.stream] = lag.get(reader.stream, 0) + behind
        family = GaugeMetricFamily(
            "af_processor_lag_messages", "Records of an assigned partition not taken yet", labels=["stream"]
        )
        for stream, behind in sorted(lag.items()):
            family.add_metric([stream], behind)
        yield family


LAG = _Lag()
REGISTRY.register(LAG)


class Consumer(base.Consumer):
    """Consumer of a Faust app on the ``nats://`` transport."""

    consumer_stopped_errors = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.member_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._conn: Any = None
        self._offsets: OffsetStore | None = None
        self._membership: GroupMembership | None = None
        self._group_nc: Any = None
        self._readers: dict[TP, PartitionReader] = {}
        self._assigned: set[TP] = set()
        self._generation = 0
        self._highwaters: dict[TP, int] = {}
        self._subscription: tuple[str, ...] = ()
        self._data = asyncio.Event()
        self._rebalancer: asyncio.Task[None] | None = None
        self._max_per_partition = 1000
        LAG.consumers.add(self)

    # -- lifecycle ------------------------------------------------------------------

    async def on_start(self) -> None:
        await super().on_start()
        await self._connection()
        # The group's buckets are replicated as its topics are (R3 on a cluster).
        replicas = self.app.conf.topic_replication_factor
        self._offsets = OffsetStore(self._conn.js, self.app.conf.id, replicas)
        if not self.app.client_only:
            settings = self.transport.settings  # type: ignore[attr-defined]
            self._group_nc, group_js = await self.transport.open_dedicated("group")  # type: ignore[attr-defined]
            self._membership = GroupMembership(
                group_js,
                self.app.conf.id,
                self.member_id,
                metadata=self._member_metadata,
                assign=self._assign,
                heartbeat_s=settings.heartbeat_s,
                session_timeout_s=settings.session_timeout_s,
                replicas=replicas,
            )
            self._membership.set_subscription(self._subscription)
            await self._membership.start()
            self._rebalancer = asyncio.get_running_loop().create_task(
                self._rebalance_loop(), name="streams-rebalance"
            )

    async def on_stop(self) -> None:
        await super().on_stop()  # waits for in-flight events and commits
        await self._commit_all()  # ... unless a periodic commit was running
        task, self._rebalancer = self._rebalancer, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._membership is not None:
            await self._membership.stop()
        if self._group_nc is not None:
            with contextlib.suppress(Exception):
                await self._group_nc.drain()
            self._group_nc = None
        await asyncio.gather(*(r.stop() for r in self._readers.values()))
        self._readers.clear()
        if self._conn is not None:
            self._conn = None
            await self.transport.release()  # type: ignore[attr-defined]

    @property
    def _assignor(self) -> Any:
        """Faust's ``PartitionAssignor`` (typed as its narrower interface in Faust)."""
        return self.app.assignor

    async def _connection(self) -> Any:
        if self._conn is None:
            self._conn = await self.transport.acquire()  # type: ignore[attr-defined]
        return self._conn

    # -- group membership -----------------------------------------------------------

    async def subscribe(self, topics: Iterable[str]) -> None:
        """Join (or update) the group's subscription; undeclared topics are created.

        Faust declares only internal topics itself and relies on Kafka's topic
        auto-creation for the others; we create them with the partition count
        of the app's topic object, else ``topic_partitions``.
        """
        self._subscription = tuple(sorted(set(topics)))
        await self._auto_create(self._subscription)
        if self.app.client_only:
            await self._read_everything(self._subscription)
        elif self._membership is not None:
            self._membership.set_subscription(self._subscription)
            await self._membership.announce()

    async def _auto_create(self, topics: Iterable[str]) -> None:
        conn = await self._connection()
        conf = self.app.conf
        declared: dict[str, int | None] = {}
        for channel in list(getattr(self.app.topics, "_topics", ())):
            for name in getattr(channel, "topics", ()):
                declared[name] = getattr(channel, "partitions", None)
        for topic in topics:
            if await conn.topics.describe(topic) is None and conf.topic_allow_declare:
                await conn.topics.declare(
                    topic,
                    declared.get(topic) or conf.topic_partitions,
                    replicas=conf.topic_replication_factor,
                )

    async def _read_everything(self, topics: Iterable[str]) -> None:
        """A client-only app (a Faust RPC client: ``agent.ask`` from a command)
        is in no group. As Kafka's consumer without a group id, it reads every
        partition of its subscription, from where ``consumer_auto_offset_reset``
        says, and commits nothing (Faust's ``commit`` refuses for such apps)."""
        wanted: set[TP] = set()
        for topic in topics:
            spec = await self._conn.topics.require(topic)
            wanted.update(TP(topic, partition) for partition in range(spec.partitions))
        for tp in self._assigned - wanted:
            reader = self._readers.pop(tp, None)
            if reader is not None:
                await reader.stop()
        new = wanted - self._assigned
        if new:
            bounds = await self._conn.topics.bounds(new)
            latest = self.app.conf.consumer_auto_offset_reset == "latest"
            for tp in new:
                reader = PartitionReader(self._conn.nc, self._conn.js, tp, self._data.set)
                reader.start(bounds[tp].highwater if latest else bounds[tp].earliest)
                self._readers[tp] = reader
        self._assigned = wanted
        log.info("client-only: reading all %d partitions of %s", len(wanted), ", ".join(topics))

    def _member_metadata(self) -> bytes:
        return member_metadata(self._assignor, self._subscription)

    async def _assign(self, metadata: Mapping[str, bytes]) -> Mapping[str, bytes]:
        return await assign(self._assignor, self._conn.topics, metadata)

    async def _rebalance_loop(self) -> None:
        membership = self._membership
        assert membership is not None
        seen = 0
        while True:
            gen = await membership.next_generation(after=seen)
            seen = gen.number
            try:
                await self._apply(membership, gen)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("rebalance to generation %d failed", gen.number)
                await self.crash(exc)
                return

    async def _apply(self, membership: GroupMembership, gen: Generation) -> None:
        mine = self.member_id in gen.members
        if self._assigned or mine:
            self.app.on_rebalance_start()
            await self.on_partitions_revoked(set(self._assigned))
            self._assigned = set()
            await asyncio.gather(*(r.stop() for r in self._readers.values()))
            self._readers.clear()
        await membership.release(gen.number)
        if not mine or not await membership.wait_released(gen):
            return
        tps = apply_assignment(self._assignor, gen.assignments[self.member_id])
        for topic in {tp.topic for tp in tps}:
            await self._conn.topics.require(topic)
        for tp in tps:
            self._readers[tp] = PartitionReader(self._conn.nc, self._conn.js, tp, self._data.set)
        self._assigned = tps
        self._generation = gen.number
        self.app.consumer_generation_id = gen.number
        log.info("generation %d: %d partitions assigned to %s", gen.number, len(tps), self.member_id)
        await self.on_partitions_assigned(set(tps), gen.number)

    @Service.transitions_to(CONSUMER_PARTITIONS_REVOKED)
    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust's revoke, with a hand-over commit that cannot be skipped.

        Faust's base method drops the ack bookkeeping of the revoked partitions
        *before* the app's callback waits for in-flight events and commits, and
        that commit returns without committing when a periodic commit is in
        flight. Either way acked work could stay uncommitted and be processed
        again by the next owner. Here the bookkeeping is dropped only after the
        callback, and after one more commit that waits out any commit in flight.
        """
        if self._active_partitions is not None:
            self._active_partitions.difference_update(revoked)
        self._paused_partitions.difference_update(revoked)
        await self._on_partitions_revoked(revoked)
        await self._commit_all()
        for tp in revoked:
            self._gap.pop(tp, None)
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._read_offset.pop(tp, None)
            self._committed_offset.pop(tp, None)

    async def _commit_all(self) -> None:
        """Commit every acked offset, waiting out a periodic commit in flight."""
        if not self._assigned:
            return
        while self._commit_fut is not None:
            await self.maybe_wait_for_commit_to_finish()
        await self.commit()

    def assignment(self) -> set[TP]:
        """The partitions the group gave this member. A client-only app reads
        without a group and has none: it has nothing to hand over or commit, and
        Faust's stop would otherwise wait for its reply stream to ack the last
        reply, which only the next reply does (so it never stopped)."""
        return set() if self.app.client_only else set(self._assigned)

    # -- fetching -------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:
        await drain_messages(self, fetcher)

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> dict[TP, list[Record]]:
        active = self._assigned if active_partitions is None else active_partitions
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        membership = self._membership
        while True:
            out: dict[TP, list[Record]] = {}
            if membership is not None and not membership.lease_valid():
                # Our heartbeats are late: the group may already have given our
                # partitions away. Hand out nothing until a heartbeat succeeds.
                active = set()
            for tp in active:
                reader = self._readers.get(tp)
                if reader is not None and reader.buffer:
                    out[tp] = reader.take(self._max_per_partition)
            if out:
                return out
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {}
            self._data.clear()
            try:
                await asyncio.wait_for(self._data.wait(), remaining)
            except TimeoutError:
                return {}

    def _to_message(self, tp: TP, record: Record) -> ConsumerMessage:
        seq, ts_ns, data, raw_headers = record
        h = decode_header_block(raw_headers)
        key = h.key
        return ConsumerMessage(
            tp.topic,
            tp.partition,
            seq,
            h.timestamp if h.timestamp is not None else ts_ns / 1e9,
            0,
            h.headers,
            key,
            None if h.is_null else data,
            None,
            len(key) if key else 0,
            len(data),
            tp,
            generation_id=self.app.consumer_generation_id,
        )

    def _new_topicpartition(self, topic: str, partition: int) -> TP:
        return TP(topic, partition)

    # -- positions ------------------------------------------------------------------

    def _reader(self, tp: TP) -> PartitionReader:
        reader = self._readers.get(tp)
        if reader is None:
            if tp not in self._assigned:
                raise ValueError(f"{tp} is not assigned to this consumer")
            reader = PartitionReader(self._conn.nc, self._conn.js, tp, self._data.set)
            self._readers[tp] = reader
        return reader

    async def _seek(self, partition: TP, offset: int) -> None:
        self._reader(partition).start(offset)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        for tp, offset in partitions.items():
            self._reader(tp).start(offset)
            if offset > 0:
                self._read_offset[tp] = offset
            else:
                self._read_offset.pop(tp, None)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Position every assigned partition at its committed offset.

        Partitions without a committed offset keep their position if they have
        one (standby changelogs), else start per ``consumer_auto_offset_reset``.
        """
        assert self._offsets is not None
        tps = set(self._assigned)
        committed = await self._offsets.read(tps)
        unpositioned = [tp for tp in tps if committed[tp] is None and not self._reader(tp).started]
        if unpositioned:
            bounds = await self._conn.topics.bounds(unpositioned)
            latest = self.app.conf.consumer_auto_offset_reset == "latest"
            for tp in unpositioned:
                b = bounds[tp]
                self._reader(tp).start(b.highwater if latest else b.earliest)
        for tp, offset in committed.items():
            if offset is not None:
                self._reader(tp).start(offset)
        return cast(Mapping[TP, int], committed)

    async def position(self, tp: TP) -> int | None:
        reader = self._readers.get(tp)
        return reader.position() if reader is not None and reader.started else None

    def highwater(self, tp: TP) -> int:
        reader = self._readers.get(tp)
        hint = reader.highwater_hint if reader is not None else 0
        return max(self._highwaters.get(tp, 0), hint)

    async def highwaters(self, *partitions: TP) -> Mapping[TP, int]:
        bounds = await self._conn.topics.bounds(partitions)
        out = {tp: b.highwater for tp, b in bounds.items()}
        self._highwaters.update(out)
        return out

    async def earliest_offsets(self, *partitions: TP) -> Mapping[TP, int]:
        bounds = await self._conn.topics.bounds(partitions)
        return {tp: b.earliest for tp, b in bounds.items()}

    # -- commits --------------------------------------------------------------------

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        membership, store = self._membership, self._offsets
        if store is None:
            return False
        latest = membership.latest if membership is not None else None
        if latest is not None and self.member_id not in latest.members:
            log.warning("not committing %d offsets: this member was declared dead", len(offsets))
            return False
        try:
            refused = await store.commit(
                offsets, self._generation, membership.newest_number if membership is not None else None
            )
        except Exception as exc:
            log.warning("commit failed (will retry): %r", exc)
            return False
        return not refused

    # -- topics ---------------------------------------------------------------------

    def topic_partitions(self, topic: str) -> int | None:
        spec = self._conn.topics.cached(topic) if self._conn is not None else None
        return spec.partitions if spec is not None else None

    def key_partition(self, topic: str, key: bytes | None, partition: int | None = None) -> int | None:
        partitions = self.topic_partitions(topic)
        if partitions is None:
            return None
        if partition is not None:
            return partition
        return partition_for(key, partitions, cast(Any, self.app.conf).producer_partitioner)

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
        if not self.app.conf.topic_allow_declare:
            log.warning("topic declaration disabled; not creating %s", topic)
            return
        conn = await self._connection()
        await conn.topics.declare(
            topic,
            partitions,
            replicas=replication,
            retention_s=want_seconds(retention) if retention else None,
            compacting=bool(compacting),
            deleting=deleting,
        )

    def close(self) -> None:
        for reader in self._readers.values():
            reader.stop_nowait()

"""The canary processor: per (agent, version) request count, error rate, duration
percentiles and cost per task over sliding windows, published to ``af_canary_metrics``.

State is the Faust table ``canary-buckets``: one :class:`~streams.processors.rollup.MinuteBucket`
per (agent, version, minute of finish), changelogged. **Each event is applied
exactly once**, across crashes too: the source is partitioned by agent, so a
bucket has one writer, and each bucket keeps the source offset it applied last;
an event at or below it (re-delivered after a crash, because the changelog ran
ahead of the committed offset) is skipped. The event's effect and the fence are
one table value, so one changelog record (one per bucket changed in a batch of
events): they are recovered together or not at all.

Decisions: every ``publish_interval_s`` (1 s) the windows of each (agent, version)
that changed are put to KV under ``<agent>.<version>`` (coalesced: one write per
key per interval, not per event); every ``refresh_s`` (5 s) every version this
worker counted is put again, so windows age as time passes without events.
Buckets older than the longest window are deleted when their version's next minute starts.

Options (``ProcessorConfig.options``): ``min_samples`` (20), ``publish_interval_s``
(1.0), ``refresh_s`` (5.0), ``prices`` (the price table file; default ``AF_PRICES``,
as metering: cost per task is each task's price in its currency).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import faust
from nats.js.kv import KeyValue

from mesh import names
from streams.processors.app import Decisions, ProcessorConfig
from streams.processors.executions import read_finished, traced
from streams.processors.pricing import configured_prices
from streams.processors.rollup import (
    RETENTION_MINUTES,
    MinuteBucket,
    Sample,
    bucket_key,
    sample_of,
    summarize,
)

__all__ = ["CanaryOptions", "install"]

log = logging.getLogger(__name__)

TABLE = "canary-buckets"
BATCH = 500  # events taken at a time
BATCH_WAIT_S = 0.05  # how long a batch waits to fill


@dataclass(frozen=True)
class CanaryOptions:
    min_samples: int = 20  # a window with fewer requests says "insufficient data"
    publish_interval_s: float = 1.0  # coalescing: at most one KV write per key per interval
    refresh_s: float = 5.0  # every counted version is re-published this often (windows age)

    @classmethod
    def of(cls, options: dict[str, Any]) -> CanaryOptions:
        chosen = cls(
            min_samples=int(options.get("min_samples", cls.min_samples)),
            publish_interval_s=float(options.get("publish_interval_s", cls.publish_interval_s)),
            refresh_s=float(options.get("refresh_s", cls.refresh_s)),
        )
        if chosen.min_samples < 1 or chosen.publish_interval_s <= 0 or chosen.refresh_s <= 0:
            raise ValueError(f"canary options out of range: {chosen}")
        return chosen


@dataclass
class Counted:
    """What this worker applied since it started: versions to publish now, and all of them."""

    dirty: set[tuple[str, str]] = field(default_factory=set)
    known: set[tuple[str, str]] = field(default_factory=set)
    newest_minute: dict[tuple[str, str], int] = field(default_factory=dict)


class Buckets:
    """The canary table (bucket key -> the bucket's changelog bytes) and the buckets
    decoded from it. A decoded bucket is used only while the table still holds the
    very bytes it came from, so a recovery or rebalance that refills the table is
    never hidden by the cache. Bytes, not Faust's JSON of an object: encoding a
    bucket with the standard library's C encoder is several times cheaper per event."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._decoded: dict[str, tuple[bytes, MinuteBucket]] = {}

    def get(self, key: str) -> MinuteBucket | None:
        raw = self.table.get(key)
        if raw is None:
            self._decoded.pop(key, None)
            return None
        hit = self._decoded.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]
        bucket = MinuteBucket.loads(raw)
        self._decoded[key] = (raw, bucket)
        return bucket

    def put(self, key: str, bucket: MinuteBucket) -> None:
        raw = bucket.dumps()
        self.table[key] = raw  # effect and fence: one changelog record
        self._decoded[key] = (raw, bucket)

    def delete(self, key: str) -> None:
        if self.table.get(key) is not None:
            del self.table[key]
        self._decoded.pop(key, None)

    # In batches (the processor's path): outside one event Faust cannot tell a key's
    # changelog partition, so the caller names it (the agent's, from its events).

    def write(self, working: dict[str, tuple[int, MinuteBucket]]) -> None:
        """Store the buckets a batch changed: one changelog record each."""
        for key, (partition, bucket) in working.items():
            raw = bucket.dumps()
            self.table.send_changelog(partition, key, raw)
            self.table.data[key] = raw
            self._decoded[key] = (raw, bucket)

    def delete_in(self, partition: int, key: str) -> None:
        if self.table.data.get(key) is not None:
            self.table.send_changelog(partition, key, None, value_serializer="raw")
            self.table.data.pop(key, None)
        self._decoded.pop(key, None)


def apply(
    buckets: Buckets,
    counted: Counted,
    sample: Sample,
    offset: int,
    batch: tuple[int, dict[str, tuple[int, MinuteBucket]]] | None = None,
) -> bool:
    """Apply one event to its bucket unless the bucket's fence says it was; True if applied.
    ``batch``: (the event's partition, the buckets the batch changed so far), stored by
    :meth:`Buckets.write` when the batch is done; None: stored now (in an event's context)."""
    key = bucket_key(sample.agent, sample.version, sample.minute)
    held = batch[1].get(key) if batch is not None else None
    bucket = held[1] if held is not None else buckets.get(key)
    if bucket is None:
        bucket = MinuteBucket()
    elif offset <= bucket.offset:
        return False
    bucket.apply(sample, offset)
    if batch is None:
        buckets.put(key, bucket)
    else:
        batch[1][key] = (batch[0], bucket)
    pair = (sample.agent, sample.version)
    counted.dirty.add(pair)
    counted.known.add(pair)
    newest = counted.newest_minute.get(pair)
    if newest is None or sample.minute > newest:
        counted.newest_minute[pair] = sample.minute
        _expire(buckets, sample, newest, batch)
    return True


def _expire(
    buckets: Buckets,
    sample: Sample,
    previous: int | None,
    batch: tuple[int, dict[str, tuple[int, MinuteBucket]]] | None,
) -> None:
    """Delete the pair's buckets that fell out of the longest window (in the agent's
    changelog partition: the event's context's, or the batch's)."""
    oldest_kept = sample.minute - RETENTION_MINUTES + 1
    since = previous - RETENTION_MINUTES + 1 if previous is not None else oldest_kept - RETENTION_MINUTES
    for minute in range(max(since, oldest_kept - 2 * RETENTION_MINUTES), oldest_kept):
        key = bucket_key(sample.agent, sample.version, minute)
        if batch is None:
            buckets.delete(key)
        else:
            batch[1].pop(key, None)
            buckets.delete_in(batch[0], key)


def install(app: faust.App, source: faust.TopicT, config: ProcessorConfig) -> None:
    options = CanaryOptions.of(dict(config.options))
    # Cost per task is metering's price of each task (the same table: AF_PRICES).
    prices = configured_prices(config.options)
    # JSON keys, raw values: each value is a bucket's bytes (Buckets).
    buckets = Buckets(app.Table(TABLE, partitions=config.partitions, key_type=str, value_type=bytes))
    decisions = Decisions(app)
    app.add_dependency(decisions)
    counted = Counted()
    kv: list[KeyValue] = []

    @app.agent(source, name="canary")
    async def canary(stream: faust.StreamT[Any]) -> None:
        # Batches, as metering's: Faust acks a batch's events only after this body, and a
        # bucket the batch changed is one changelog record, not one per event.
        batches = cast(Any, stream).take_events(BATCH, within=BATCH_WAIT_S)
        async for events in batches:
            working: dict[str, tuple[int, MinuteBucket]] = {}
            for event in events:
                finished = read_finished(event.value)
                if finished is None:
                    continue
                with traced(event, finished, "canary"):
                    sample = sample_of(finished.payload, prices, len(event.value))
                    if sample is not None:
                        at = (event.message.partition, working)
                        apply(buckets, counted, sample, event.message.offset, at)
            buckets.write(working)

    async def put(pairs: set[tuple[str, str]]) -> None:
        if not kv:
            kv.append(await decisions.js.key_value(names.BUCKET_CANARY_METRICS))
        now = datetime.now(UTC)
        now_minute = int(now.timestamp() // 60)
        for agent, version in pairs:

            def bucket_at(minute: int, agent: str = agent, version: str = version) -> MinuteBucket | None:
                return buckets.get(bucket_key(agent, version, minute))

            metrics = summarize(
                agent, version, bucket_at, now_minute, options.min_samples, now, prices.currency
            )
            await kv[0].put(names.version_key(agent, version), metrics.model_dump_json().encode())
            if metrics.windows["1h"].requests == 0:
                counted.known.discard((agent, version))  # aged out: published empty once, then forgotten

    last_refresh = [time.monotonic()]

    @app.timer(options.publish_interval_s)  # type: ignore[untyped-decorator]
    async def publish() -> None:
        if decisions.nc is None:
            return  # not connected yet (or stopping)
        if time.monotonic() - last_refresh[0] >= options.refresh_s:
            last_refresh[0] = time.monotonic()
            pairs, counted.dirty = set(counted.known), set()
        else:
            pairs, counted.dirty = counted.dirty, set()
        try:
            await put(pairs)
        except Exception:
            counted.dirty |= pairs  # next tick tries again
            log.exception("canary: publishing %d version(s) failed", len(pairs))

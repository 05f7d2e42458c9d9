"""The canary processor: per (agent, version) request count, error rate, duration
percentiles and cost per task over sliding windows, published to ``af_canary_metrics``.

State is the Faust table ``canary-buckets``: one :class:`~streams.processors.rollup.MinuteBucket`
per (agent, version, minute of finish), changelogged. **Each event is applied
exactly once**, across crashes too: the source is partitioned by agent, so a
bucket has one writer, and each bucket keeps the source offset it applied last;
an event at or below it (re-delivered after a crash, because the changelog ran
ahead of the committed offset) is skipped. The event's effect and the fence are
one table write, so one changelog record: they are recovered together or not at all.

Decisions: every ``publish_interval_s`` (1 s) the windows of each (agent, version)
that changed are put to KV under ``<agent>.<version>`` (coalesced: one write per
key per interval, not per event); every ``refresh_s`` (5 s) every version this
worker counted is put again, so windows age as time passes without events.
Buckets older than the longest window are deleted when their version's next minute starts.

Options (``ProcessorConfig.options``): ``min_samples`` (20), ``publish_interval_s``
(1.0), ``refresh_s`` (5.0).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
from nats.js.kv import KeyValue

from mesh import names
from streams.processors.app import Decisions, ProcessorConfig
from streams.processors.executions import read_finished
from streams.processors.rollup import (
    RETENTION_MINUTES,
    MinuteBucket,
    Sample,
    bucket_key,
    canary_key,
    sample_of,
    summarize,
)

__all__ = ["CanaryOptions", "install"]

log = logging.getLogger(__name__)

TABLE = "canary-buckets"


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


def apply(table: Any, counted: Counted, sample: Sample, offset: int) -> bool:
    """Apply one event to its bucket unless the bucket's fence says it was; True if applied."""
    key = bucket_key(sample.agent, sample.version, sample.minute)
    bucket = MinuteBucket.of(table.get(key))
    if bucket is None:
        bucket = MinuteBucket()
    elif offset <= bucket.offset:
        return False
    bucket.apply(sample, offset)
    table[key] = bucket  # effect and fence: one changelog record
    pair = (sample.agent, sample.version)
    counted.dirty.add(pair)
    counted.known.add(pair)
    newest = counted.newest_minute.get(pair)
    if newest is None or sample.minute > newest:
        counted.newest_minute[pair] = sample.minute
        _expire(table, sample, newest)
    return True


def _expire(table: Any, sample: Sample, previous: int | None) -> None:
    """Delete the pair's buckets that fell out of the longest window (in the event's
    context: the deletions go to the agent's changelog partition)."""
    oldest_kept = sample.minute - RETENTION_MINUTES + 1
    since = previous - RETENTION_MINUTES + 1 if previous is not None else oldest_kept - RETENTION_MINUTES
    for minute in range(max(since, oldest_kept - 2 * RETENTION_MINUTES), oldest_kept):
        key = bucket_key(sample.agent, sample.version, minute)
        if table.get(key) is not None:
            del table[key]


def install(app: faust.App, source: faust.TopicT, config: ProcessorConfig) -> None:
    options = CanaryOptions.of(dict(config.options))
    # JSON keys and values: a bucket is written through its ``__json__`` and read back as a
    # list after a recovery, which ``MinuteBucket.of`` turns into a bucket when it is next used.
    table: Any = app.Table(TABLE, partitions=config.partitions, key_type=str)
    decisions = Decisions(app)
    app.add_dependency(decisions)
    counted = Counted()
    kv: list[KeyValue] = []

    @app.agent(source, name="canary")
    async def canary(stream: faust.StreamT[Any]) -> None:
        async for event in stream.events():
            finished = read_finished(event.value)
            if finished is None:
                continue
            sample = sample_of(finished.payload)
            if sample is not None:
                apply(table, counted, sample, event.message.offset)

    async def put(pairs: set[tuple[str, str]]) -> None:
        if not kv:
            kv.append(await decisions.js.key_value(names.BUCKET_CANARY_METRICS))
        now = datetime.now(UTC)
        now_minute = int(now.timestamp() // 60)
        for agent, version in pairs:

            def bucket_at(minute: int, agent: str = agent, version: str = version) -> MinuteBucket | None:
                return MinuteBucket.of(table.get(bucket_key(agent, version, minute)))

            metrics = summarize(agent, version, bucket_at, now_minute, options.min_samples, now)
            await kv[0].put(canary_key(agent, version), metrics.model_dump_json().encode())
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

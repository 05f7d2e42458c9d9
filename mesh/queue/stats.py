"""Queue statistics: depth, in-flight and stall per lane, dead letters per agent.

A full ``max_ack_pending`` makes JetStream stop delivering *without any
error*; :attr:`LaneStats.stalled` and the ``af_queue_ack_pending_ratio``
gauge make that visible (alert ``QueueStalled``: ``deployment/monitoring/alerts/``).
The queue maintenance also sets, every 5 s, the JetStream health gauges
(:func:`jetstream_stats`), the budget gauges (:func:`limit_stats`) and the
canary gauges (:func:`canary_stats`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import Gauge
from pydantic import BaseModel

from mesh import names
from mesh.canary import VersionMetrics
from mesh.kv import current_entries
from mesh.queue import metrics
from mesh.queue.budgets import read_limits
from mesh.queue.gates import read_gates
from mesh.wire.connection import consumers_of

__all__ = ["LaneStats", "QueueStats", "canary_stats", "jetstream_stats", "limit_stats", "queue_stats"]

log = logging.getLogger(__name__)


class LaneStats(BaseModel):
    agent: str
    priority: int
    consumer: str
    waiting: int  # tasks not yet delivered
    in_flight: int  # delivered, not yet acked
    max_in_flight: int  # max_ack_pending
    redelivered: int
    pulls_waiting: int  # idle workers' lingering pulls
    gate: str = "open"  # its agent's dispatch gate (mesh.queue.gates): "closed (draining)" takes nothing

    @property
    def stalled(self) -> bool:
        return self.max_in_flight > 0 and self.in_flight >= self.max_in_flight


class QueueStats(BaseModel):
    lanes: list[LaneStats]
    dead_letters: dict[str, int]

    def for_agent(self, agent: str) -> list[LaneStats]:
        return [lane for lane in self.lanes if lane.agent == agent]


async def queue_stats(js: JetStreamContext, *, update_metrics: bool = True) -> QueueStats:
    lanes: list[LaneStats] = []
    next_waiting: dict[tuple[str, str], tuple[str, int]] = {}  # lane -> (subject, first seq not delivered)
    gates = await read_gates(js)
    for info in await consumers_of(js, names.STREAM_TASKS):
        subject = info.config.filter_subject or ""
        parts = subject.split(".")
        if len(parts) != 4 or not parts[3].isdigit():
            continue
        lanes.append(
            LaneStats(
                agent=parts[2],
                priority=int(parts[3]),
                consumer=info.name,
                waiting=info.num_pending or 0,
                in_flight=info.num_ack_pending or 0,
                max_in_flight=info.config.max_ack_pending or 0,
                redelivered=info.num_redelivered or 0,
                pulls_waiting=info.num_waiting or 0,
                gate=gates[parts[2]].describe() if parts[2] in gates else "open",
            )
        )
        if info.num_pending:
            delivered = info.delivered.stream_seq if info.delivered is not None else 0
            next_waiting[(parts[2], parts[3])] = (subject, delivered + 1)
    lanes.sort(key=lambda lane: (lane.agent, lane.priority))
    dlq = await js.stream_info(names.STREAM_DLQ, subjects_filter=f"{names.DLQ_PREFIX}.tasks.>")
    dead = {s.rsplit(".", 1)[1]: n for s, n in (dlq.state.subjects or {}).items()}
    if update_metrics:
        for lane in lanes:
            labels = (lane.agent, str(lane.priority))
            metrics.QUEUE_DEPTH.labels(*labels).set(lane.waiting)
            ratio = lane.in_flight / lane.max_in_flight if lane.max_in_flight else 0.0
            metrics.QUEUE_ACK_PENDING.labels(*labels).set(ratio)
        ages = await asyncio.gather(*(_age(js, *at) for at in next_waiting.values()))
        oldest = dict(zip(next_waiting, ages, strict=True))
        for lane in lanes:
            labels = (lane.agent, str(lane.priority))
            metrics.QUEUE_OLDEST_AGE.labels(*labels).set(oldest.get(labels, 0.0))
        # Gauges follow the state: an agent whose dead letters were purged (or a
        # lane that was removed) reads 0 / disappears, not its last count.
        for (agent,) in _label_sets(metrics.DLQ_SIZE, ("agent",)):
            if agent not in dead:
                metrics.DLQ_SIZE.labels(agent).set(0)
        for agent, n in dead.items():
            metrics.DLQ_SIZE.labels(agent).set(n)
        present = {(lane.agent, str(lane.priority)) for lane in lanes}
        for gauge in (metrics.QUEUE_DEPTH, metrics.QUEUE_ACK_PENDING, metrics.QUEUE_OLDEST_AGE):
            for stale in _label_sets(gauge, ("agent", "priority")) - present:
                gauge.remove(*stale)
    return QueueStats(lanes=lanes, dead_letters=dead)


async def _age(js: JetStreamContext, subject: str, seq: int) -> float:
    """Seconds since the first message on ``subject`` from ``seq`` on was stored; 0 if none."""
    with contextlib.suppress(NotFoundError):
        msg = await js.get_msg(names.STREAM_TASKS, seq=seq, subject=subject, next=True)
        if msg.time is not None:
            return max(0.0, (datetime.now(UTC) - msg.time).total_seconds())
    return 0.0


async def jetstream_stats(js: JetStreamContext) -> None:
    """Set the JetStream health gauges: every stream's size and source lag, the
    lag of each durable consumer outside the task stream (the recorders'; the
    task lanes have gauges of their own), and the account's storage."""
    streams: set[tuple[str, ...]] = set()
    consumers: set[tuple[str, ...]] = set()
    sources: set[tuple[str, ...]] = set()
    for info in await js.streams_info():
        stream = info.config.name or ""
        streams.add((stream,))
        metrics.STREAM_MESSAGES.labels(stream).set(info.state.messages)
        metrics.STREAM_BYTES.labels(stream).set(info.state.bytes)
        for source in info.sources or ():
            sources.add((stream, source.name))
            metrics.SOURCE_LAG.labels(stream, source.name).set(source.lag or 0)
        if stream == names.STREAM_TASKS or not info.state.consumer_count:
            continue
        for consumer in await consumers_of(js, stream):
            if not consumer.config.durable_name:
                continue
            consumers.add((stream, consumer.name))
            metrics.CONSUMER_PENDING.labels(stream, consumer.name).set(consumer.num_pending or 0)
            metrics.CONSUMER_ACK_PENDING.labels(stream, consumer.name).set(consumer.num_ack_pending or 0)
    for gauge, present, label_names in (
        (metrics.STREAM_MESSAGES, streams, ("stream",)),
        (metrics.STREAM_BYTES, streams, ("stream",)),
        (metrics.SOURCE_LAG, sources, ("stream", "source")),
        (metrics.CONSUMER_PENDING, consumers, ("stream", "consumer")),
        (metrics.CONSUMER_ACK_PENDING, consumers, ("stream", "consumer")),
    ):
        for stale in _label_sets(gauge, label_names) - present:
            gauge.remove(*stale)
    account = await js.account_info()
    metrics.JETSTREAM_STORAGE.set(account.storage)
    metrics.JETSTREAM_STORAGE_LIMIT.set(max(0, account.limits.max_storage))


async def limit_stats(js: JetStreamContext) -> None:
    """Set the budget gauges from ``af_budgets``: each budget's limit, and which limits are spent."""
    budgets, quotas, spent = await read_limits(js)
    for budget in budgets:
        metrics.BUDGET_LIMIT.labels(budget.id).set(budget.limit)
    limits = [(b.id, "budget") for b in budgets] + [(q.id, "quota") for q in quotas]
    for ident, kind in limits:
        metrics.LIMIT_SPENT.labels(ident, kind).set(1.0 if ident in spent else 0.0)
    for stale in _label_sets(metrics.BUDGET_LIMIT, ("budget",)) - {(b.id,) for b in budgets}:
        metrics.BUDGET_LIMIT.remove(*stale)
    for stale in _label_sets(metrics.LIMIT_SPENT, ("limit", "kind")) - set(limits):
        metrics.LIMIT_SPENT.remove(*stale)


CANARY_WINDOW = "5m"


async def canary_stats(js: JetStreamContext) -> None:
    """Set the canary gauges from ``af_canary_metrics``: each version's requests, errors
    and p99 duration over the last 5 minutes, as the canary processor last put them."""
    kv = await js.key_value(names.BUCKET_CANARY_METRICS)
    versions: set[tuple[str, ...]] = set()
    timed: set[tuple[str, ...]] = set()
    for entry in await current_entries(js, kv, names.BUCKET_CANARY_METRICS):
        try:
            found = VersionMetrics.model_validate_json(entry.value or b"")
        except ValueError as exc:
            log.error("%s in %s is not readable, left out: %s", entry.key, names.BUCKET_CANARY_METRICS, exc)
            continue
        window = found.windows.get(CANARY_WINDOW)
        if window is None:
            continue
        labels = (found.agent, found.version)
        versions.add(labels)
        metrics.CANARY_REQUESTS.labels(*labels).set(window.requests)
        metrics.CANARY_ERRORS.labels(*labels).set(window.errors)
        if window.p99_ms is not None:
            timed.add(labels)
            metrics.CANARY_P99.labels(*labels).set(window.p99_ms / 1000)
    for gauge, present in (
        (metrics.CANARY_REQUESTS, versions),
        (metrics.CANARY_ERRORS, versions),
        (metrics.CANARY_P99, timed),
    ):
        for stale in _label_sets(gauge, ("agent", "version")) - present:
            gauge.remove(*stale)


def _label_sets(gauge: Gauge, label_names: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The label values a gauge has series for (from what it exports)."""
    return {
        tuple(sample.labels[name] for name in label_names)
        for family in gauge.collect()
        for sample in family.samples
    }

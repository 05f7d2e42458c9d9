"""Queue statistics: depth, in-flight and stall per lane, dead letters per agent.

A full ``max_ack_pending`` makes JetStream stop delivering *without any
error*; :attr:`LaneStats.stalled` and the ``af_queue_ack_pending_ratio``
gauge make that visible (alert: ``deployment/prometheus/alerts.yml``).
"""

from __future__ import annotations

from nats.js import JetStreamContext
from prometheus_client import Gauge
from pydantic import BaseModel

from mesh import names
from mesh.queue import metrics
from mesh.queue.gates import read_gates

__all__ = ["LaneStats", "QueueStats", "queue_stats"]


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
    gates = await read_gates(js)
    for info in await js.consumers_info(names.STREAM_TASKS):
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
    lanes.sort(key=lambda lane: (lane.agent, lane.priority))
    dlq = await js.stream_info(names.STREAM_DLQ, subjects_filter=f"{names.DLQ_PREFIX}.tasks.>")
    dead = {s.rsplit(".", 1)[1]: n for s, n in (dlq.state.subjects or {}).items()}
    if update_metrics:
        for lane in lanes:
            labels = (lane.agent, str(lane.priority))
            metrics.QUEUE_DEPTH.labels(*labels).set(lane.waiting)
            ratio = lane.in_flight / lane.max_in_flight if lane.max_in_flight else 0.0
            metrics.QUEUE_ACK_PENDING.labels(*labels).set(ratio)
        # Gauges follow the state: an agent whose dead letters were purged (or a
        # lane that was removed) reads 0 / disappears, not its last count.
        for (agent,) in _label_sets(metrics.DLQ_SIZE, ("agent",)):
            if agent not in dead:
                metrics.DLQ_SIZE.labels(agent).set(0)
        for agent, n in dead.items():
            metrics.DLQ_SIZE.labels(agent).set(n)
        present = {(lane.agent, str(lane.priority)) for lane in lanes}
        for gauge in (metrics.QUEUE_DEPTH, metrics.QUEUE_ACK_PENDING):
            for stale in _label_sets(gauge, ("agent", "priority")) - present:
                gauge.remove(*stale)
    return QueueStats(lanes=lanes, dead_letters=dead)


def _label_sets(gauge: Gauge, label_names: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The label values a gauge has series for (from what it exports)."""
    return {
        tuple(sample.labels[name] for name in label_names)
        for family in gauge.collect()
        for sample in family.samples
    }

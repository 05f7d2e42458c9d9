"""Acknowledgment tracking and the mesh's Prometheus metrics.

Every durable delivery a subscriber is working on, and every request waiting
for its reply, is a *pending ack* with a deadline until it is settled with an
outcome (``ack``, ``nak``, ``timeout``, ``dead_letter``, ``expired`` for
deliveries; ``ok``, ``timeout``, ``no_responders``, ``remote_error`` for
requests). The tracker answers "what is in flight and what is overdue" for
operators and exports the same facts as Prometheus metrics:

- ``af_mesh_pending_acks{channel}``: deliveries/requests in flight now;
- ``af_mesh_ack_outcomes_total{channel,outcome}``;
- ``af_mesh_ack_seconds{channel}``: time from delivery (or send) to settlement;
- ``af_mesh_rejected_total{channel,reason}``: messages refused on receipt
  (``decode_error``, ``unknown_schema_version``, ``invalid_payload``, ``expired``);
- ``af_mesh_messages_total{channel_type,direction}``: sent and received.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "MESSAGES",
    "REJECTED",
    "AckTracker",
    "PendingAck",
    "Tally",
    "count_rejected",
]

PENDING: Final = Gauge("af_mesh_pending_acks", "Deliveries and requests awaiting settlement", ["channel"])
OUTCOMES: Final = Counter(
    "af_mesh_ack_outcomes", "Settled deliveries and requests by outcome", ["channel", "outcome"]
)
SETTLE_SECONDS: Final = Histogram(
    "af_mesh_ack_seconds",
    "Time from delivery (or request) to settlement",
    ["channel"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REJECTED: Final = Counter("af_mesh_rejected", "Messages refused on receipt", ["channel", "reason"])


class Tally:
    """A counter for the per-message path: a plain int, read by Prometheus at scrape time.

    A labelled ``Counter.inc()`` takes a lock on every call; this is bumped
    from the event loop thread only, so an int is enough.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        self.value += amount


class _MessageTallies(Collector):
    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str], Tally] = {}

    def labels(self, channel_type: str, direction: str) -> Tally:
        return self._tallies.setdefault((channel_type, direction), Tally())

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "af_mesh_messages", "Mesh messages", labels=["channel_type", "direction"]
        )
        for (channel_type, direction), tally in sorted(list(self._tallies.items())):
            family.add_metric([channel_type, direction], tally.value)
        yield family


MESSAGES: Final = _MessageTallies()
REGISTRY.register(MESSAGES)


def count_rejected(channel: str, reason: str) -> None:
    REJECTED.labels(channel, reason).inc()


@dataclass(slots=True)
class PendingAck:
    """One delivery or request in flight."""

    channel: str
    message_id: str
    attempt: int
    started: float  # time.monotonic()
    deadline: float  # time.monotonic()
    settled: str | None = None

    @property
    def overdue(self) -> bool:
        return self.settled is None and time.monotonic() > self.deadline


@dataclass(slots=True)
class _ChannelMetrics:
    pending: Gauge
    seconds: Histogram
    outcomes: dict[str, Counter] = field(default_factory=dict)


class AckTracker:
    """In-flight deliveries and requests of one process, with outcome counts.

    Not thread-safe by design: it lives on the event loop of its ``Mesh``.
    """

    def __init__(self) -> None:
        self._pending: dict[int, PendingAck] = {}
        self._metrics: dict[str, _ChannelMetrics] = {}
        self.outcomes: dict[tuple[str, str], int] = {}

    def begin(self, channel: str, message_id: str, timeout_s: float, attempt: int = 1) -> PendingAck:
        now = time.monotonic()
        entry = PendingAck(channel, message_id, attempt, now, now + timeout_s)
        self._pending[id(entry)] = entry
        self._channel(channel).pending.inc()
        return entry

    def settle(self, entry: PendingAck, outcome: str) -> None:
        """Record ``outcome``; settling twice keeps the first outcome."""
        if self._pending.pop(id(entry), None) is None:
            return
        entry.settled = outcome
        metrics = self._channel(entry.channel)
        metrics.pending.dec()
        metrics.seconds.observe(time.monotonic() - entry.started)
        counter = metrics.outcomes.get(outcome)
        if counter is None:
            counter = metrics.outcomes[outcome] = OUTCOMES.labels(entry.channel, outcome)
        counter.inc()
        key = (entry.channel, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def pending(self, channel: str | None = None) -> list[PendingAck]:
        """What is in flight now, oldest first."""
        entries = [e for e in self._pending.values() if channel is None or e.channel == channel]
        return sorted(entries, key=lambda e: e.started)

    def overdue(self) -> list[PendingAck]:
        """In-flight entries past their deadline (a stuck handler, a lost reply)."""
        now = time.monotonic()
        return [e for e in self.pending() if now > e.deadline]

    def count(self, channel: str, outcome: str) -> int:
        return self.outcomes.get((channel, outcome), 0)

    def _channel(self, channel: str) -> _ChannelMetrics:
        metrics = self._metrics.get(channel)
        if metrics is None:
            metrics = self._metrics[channel] = _ChannelMetrics(
                PENDING.labels(channel), SETTLE_SECONDS.labels(channel)
            )
        return metrics

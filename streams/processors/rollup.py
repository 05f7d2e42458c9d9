"""Canary metrics without I/O: per-minute buckets, sliding windows and the KV contract.

A :class:`MinuteBucket` holds one (agent, version, minute)'s requests, errors,
cost and a DDSketch of durations, plus the source offset it applied last (the
fence that lets the canary processor apply each event once). Windows of 1, 5,
15 and 60 minutes are merges of the newest buckets (:func:`summarize`);
a window with fewer than ``min_samples`` requests reports counts only,
``status: "insufficient data"``. :class:`~mesh.canary.VersionMetrics` (the KV
contract, in ``mesh``) is what the processor puts in ``af_canary_metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from ddsketch import DDSketch

from mesh.canary import INSUFFICIENT, WINDOWS, VersionMetrics, WindowMetrics
from mesh.queue.billing import NANO
from mesh.queue.runs import ExecutionFinished, RunStatus
from streams.processors.pricing import PriceTable, price
from streams.processors.sketch import decode, encode, new_sketch

__all__ = [
    "RETENTION_MINUTES",
    "UNKNOWN_VERSION",
    "MinuteBucket",
    "Sample",
    "bucket_key",
    "sample_of",
    "summarize",
    "task_cost",
]

RETENTION_MINUTES: Final = max(WINDOWS.values())
UNKNOWN_VERSION: Final = "unknown"  # an event that does not say which version ran

_QUANTILES: Final = (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))


def task_cost(event: ExecutionFinished, prices: PriceTable, carried: int = 0) -> float:
    """What one task cost in ``prices``' currency: metering's price of it (compute, tokens,
    storage, network; ``carried``: the finished event's size as it arrived), the same
    amount its billing record says."""
    return price(event, prices, carried).total / NANO


@dataclass(frozen=True, slots=True)
class Sample:
    """One finished execution as the canary counts it."""

    agent: str
    version: str
    minute: int  # minutes since the epoch (UTC) of its finish
    failed: bool
    duration_ms: float | None
    cost: float | None


def sample_of(event: ExecutionFinished, prices: PriceTable, carried: int = 0) -> Sample | None:
    """The sample of a run that a version ran to an end (succeeded or failed), priced
    with ``prices``; None for an expired or cancelled run, which says nothing about the
    version."""
    if event.status not in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        return None
    duration = event.duration_ms if event.duration_ms is not None and event.duration_ms >= 0 else None
    return Sample(
        agent=event.agent,
        version=event.version or UNKNOWN_VERSION,
        minute=int(event.finished_at.timestamp() // 60),
        failed=event.status == RunStatus.FAILED,
        duration_ms=duration,
        cost=task_cost(event, prices, carried),
    )


def bucket_key(agent: str, version: str, minute: int) -> str:
    """The canary table's key (agent names have no space; minutes neither)."""
    return f"{agent} {version} {minute}"


@dataclass(slots=True)
class MinuteBucket:
    """One (agent, version, minute): what the canary table holds per key."""

    offset: int = 0  # the source offset of the last event applied: anything at or below it was
    requests: int = 0
    errors: int = 0
    cost_sum: float = 0.0
    costed: int = 0  # requests with a cost
    durations: DDSketch = field(default_factory=new_sketch)

    def apply(self, sample: Sample, offset: int) -> None:
        self.offset = offset
        self.requests += 1
        self.errors += sample.failed
        if sample.duration_ms is not None:
            self.durations.add(sample.duration_ms)
        if sample.cost is not None:
            self.cost_sum += sample.cost
            self.costed += 1

    def dumps(self) -> bytes:
        """What the changelog holds: compact JSON, sketch included."""
        state = [self.offset, self.requests, self.errors, self.cost_sum, self.costed, encode(self.durations)]
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def loads(cls, raw: bytes) -> MinuteBucket:
        offset, requests, errors, cost_sum, costed, sketch = json.loads(raw)
        return cls(offset, requests, errors, cost_sum, costed, decode(sketch))


def _window(minutes: int, requests: int, errors: int, cost_sum: float, costed: int,
            durations: DDSketch, min_samples: int) -> WindowMetrics:  # fmt: skip
    if requests < max(min_samples, 1):
        return WindowMetrics(minutes=minutes, requests=requests, errors=errors, status=INSUFFICIENT)
    quantiles = {name: durations.get_quantile_value(q) if durations.count else None for name, q in _QUANTILES}
    return WindowMetrics(
        minutes=minutes, requests=requests, errors=errors, status="ok", error_rate=errors / requests,
        cost_per_task=cost_sum / costed if costed else None, **quantiles,
    )  # fmt: skip


def summarize(
    agent: str,
    version: str,
    bucket_at: Callable[[int], MinuteBucket | None],
    now_minute: int,
    min_samples: int,
    as_of: datetime,
    cost_unit: str,
) -> VersionMetrics:
    """Every window of (agent, version) ending at ``now_minute``, merging the buckets
    ``bucket_at(minute)`` gives, newest first."""
    merged = new_sketch()
    requests = errors = costed = 0
    cost_sum = 0.0
    windows: dict[str, WindowMetrics] = {}
    ends = {n: name for name, n in WINDOWS.items()}
    for back in range(RETENTION_MINUTES):
        bucket = bucket_at(now_minute - back)
        if bucket is not None:
            requests += bucket.requests
            errors += bucket.errors
            cost_sum += bucket.cost_sum
            costed += bucket.costed
            merged.merge(bucket.durations)
        if back + 1 in ends:
            name = ends[back + 1]
            windows[name] = _window(back + 1, requests, errors, cost_sum, costed, merged, min_samples)
    return VersionMetrics(agent=agent, version=version, as_of=as_of, min_samples=min_samples,
                          cost_unit=cost_unit, windows=windows)  # fmt: skip

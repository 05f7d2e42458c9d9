"""``af_processor_lag_messages``: per stream, what a processor's assigned partitions
have not handed over yet (the highwater its deliveries report, minus its position)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.consumer import _Lag


@dataclass(eq=False)
class _Reader:
    stream: str
    highwater_hint: int
    next_offset: int
    started: bool = True

    def position(self) -> int:
        return self.next_offset


@dataclass(eq=False)
class _Consumer:
    _readers: dict[str, _Reader] = field(default_factory=dict)
    _assigned: set[str] = field(default_factory=set)


def _lag(collector: _Lag) -> dict[str, float]:
    (family,) = collector.collect()
    return {s.labels["stream"]: s.value for s in family.samples}


def test_lag_counts_assigned_started_partitions_and_sums_consumers_reading_one_stream() -> None:
    collector = _Lag()
    one = _Consumer(
        {"p0": _Reader("af-executions-0", 120, 20), "p1": _Reader("af-executions-1", 5, 6),
         "p2": _Reader("af-executions-2", 50, 1), "p3": _Reader("af-executions-3", 9, 1, started=False)},
        {"p0", "p1", "p3"},
    )  # fmt: skip
    other = _Consumer({"p0": _Reader("af-executions-0", 30, 25)}, {"p0"})
    consumers: list[Any] = [one, other]
    for consumer in consumers:
        collector.consumers.add(consumer)
    # p2 was revoked, p3 not started; p1's position is past a stale highwater: 0, not -1.
    assert _lag(collector) == {"af-executions-0": 105, "af-executions-1": 0}

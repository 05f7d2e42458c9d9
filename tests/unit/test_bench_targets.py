"""Which benchmark targets a result misses, and how it says so."""

from __future__ import annotations

from benchmarks.targets import missed


def test_a_result_that_meets_every_target_misses_none() -> None:
    assert missed("queue", {"ratio": 0.52, "p99_ms": 2.6}) == []


def test_each_missed_target_is_named_with_its_value_and_bound() -> None:
    assert missed("queue", {"ratio": 0.49, "p99_ms": 5.0}) == [
        "queue.ratio = 0.49, target >= 0.5",
        "queue.p99_ms = 5.0, target < 5.0",
    ]


def test_nested_fields_and_missing_fields() -> None:
    result = {"ephemeral": {"p99_ms": 0.3, "ratio": 0.9}, "durable": {"p99_ms": 0.5, "ratio": 0.7}}
    assert missed("messaging", result) == [
        "messaging.request_reply.p99_ms: missing from the result",
        "messaging.request_reply.ratio: missing from the result",
    ]

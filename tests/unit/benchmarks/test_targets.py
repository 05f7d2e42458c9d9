"""Which benchmark targets a result misses, and how it says so."""

from __future__ import annotations

from benchmarks.harness import percentile
from benchmarks.suites import SUITES
from benchmarks.targets import TARGETS, missed
from gateway.cli import bench


def test_a_result_that_meets_every_target_misses_none() -> None:
    assert missed("queue", {"ratio": 0.52, "p99_ms": 2.6, "two_processes": {"ratio": 0.55}}) == []


def test_each_missed_target_is_named_with_its_value_and_bound() -> None:
    assert missed("queue", {"ratio": 0.49, "p99_ms": 5.0, "two_processes": {"ratio": 0.41}}) == [
        "queue.ratio = 0.49, target >= 0.5",
        "queue.two_processes.ratio = 0.41, target >= 0.5",
        "queue.p99_ms = 5.0, target < 5.0",
    ]


def test_nested_fields_and_missing_fields() -> None:
    result = {"ephemeral": {"p99_ms": 0.3, "ratio": 0.9}, "durable": {"p99_ms": 0.5, "ratio": 0.7}}
    assert missed("messaging", result) == [
        "messaging.request_reply.p99_ms: missing from the result",
        "messaging.request_reply.ratio: missing from the result",
    ]


def test_runs_missing_from_the_database_miss_the_skeleton_targets() -> None:
    result = {"runs_recorded_in_db_per_s": None, "runs_missing_from_db": 12}
    assert missed("skeleton", result) == [
        "skeleton.runs_recorded_in_db_per_s: missing from the result",
        "skeleton.runs_missing_from_db = 12, target < 1.0",
    ]
    assert missed("skeleton", {"runs_recorded_in_db_per_s": 3400.0, "runs_missing_from_db": 0}) == []


def test_every_suite_is_a_cli_choice_and_every_target_belongs_to_a_suite() -> None:
    choices = next(p for p in bench.params if p.name == "suite").type.choices  # type: ignore[attr-defined]
    assert set(TARGETS) <= set(SUITES)
    assert list(choices) == [*SUITES, "all"]


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0

"""Canary metrics without a server: windows over minute buckets, the minimum-sample
gate, the offset fence, bucket expiry, KV keys and the cost of a task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mesh.names import version_key
from mesh.queue.billing import NANO
from mesh.queue.breakers import breaker_scope
from mesh.queue.runs import ExecutionFinished, RunStatus
from streams.processors.canary import Buckets, Counted, apply
from streams.processors.pricing import DEFAULT_PRICES, ModelPrice, PriceTable, price
from streams.processors.rollup import (
    RETENTION_MINUTES,
    MinuteBucket,
    Sample,
    bucket_key,
    sample_of,
    summarize,
    task_cost,
)

NOW = datetime(2026, 12, 3, 12, 0, 30, tzinfo=UTC)
MINUTE = int(NOW.timestamp() // 60)


def _sample(minute: int, duration: float = 10.0, failed: bool = False, cost: float | None = 1.0) -> Sample:
    return Sample("shop", "1.0.0", minute, failed, duration, cost)


def _table(samples: list[Sample]) -> tuple[dict[str, bytes], Counted]:
    table: dict[str, bytes] = {}
    counted = Counted()
    buckets = Buckets(table)
    for offset, s in enumerate(samples, start=1):
        apply(buckets, counted, s, offset)
    return table, counted


def _summary(table: dict[str, bytes], min_samples: int = 1) -> Any:
    buckets = Buckets(table)
    bucket_at = lambda m: buckets.get(bucket_key("shop", "1.0.0", m))  # noqa: E731
    return summarize("shop", "1.0.0", bucket_at, MINUTE, min_samples, NOW, "USD")


def test_each_window_merges_the_minutes_it_covers_ending_now() -> None:
    # 1 event now, 2 four minutes ago, 3 ten minutes ago, 4 thirty minutes ago, 5 two hours ago
    ages = [0] + [4] * 2 + [10] * 3 + [30] * 4 + [120] * 5
    table, _ = _table([_sample(MINUTE - a, duration=float(a + 1)) for a in sorted(ages, reverse=True)])
    windows = _summary(table).windows
    assert {name: w.requests for name, w in windows.items()} == {"1m": 1, "5m": 3, "15m": 6, "1h": 10}
    assert windows["1m"].p50_ms == pytest.approx(1.0, rel=0.01)
    assert windows["1h"].p99_ms == pytest.approx(31.0, rel=0.01)


def test_error_rate_and_cost_per_task_count_only_what_was_measured() -> None:
    samples = [_sample(MINUTE, failed=i < 3, cost=None if i % 2 else 4.0) for i in range(10)]
    hour = _summary(_table(samples)[0]).windows["1h"]
    assert (hour.requests, hour.errors, hour.error_rate) == (10, 3, 0.3)
    assert hour.cost_per_task == 4.0  # the five runs with a cost


@pytest.mark.parametrize("requests", [0, 1, 19])
def test_a_window_below_min_samples_has_counts_but_no_rates(requests: int) -> None:
    table, _ = _table([_sample(MINUTE, failed=True) for _ in range(requests)])
    for window in _summary(table, min_samples=20).windows.values():
        assert window.status == "insufficient data" and window.requests == requests
        assert window.error_rate is None and window.p50_ms is None and window.cost_per_task is None


def test_at_min_samples_the_window_has_numbers() -> None:
    table, _ = _table([_sample(MINUTE) for _ in range(20)])
    hour = _summary(table, min_samples=20).windows["1h"]
    assert hour.status == "ok" and hour.error_rate == 0.0 and hour.p95_ms == pytest.approx(10.0, rel=0.01)


def test_an_event_at_or_below_its_buckets_fence_is_not_applied_again() -> None:
    table, counted = _table([_sample(MINUTE) for _ in range(5)])  # offsets 1..5
    buckets = Buckets(table)
    for offset in (1, 5):
        assert not apply(buckets, counted, _sample(MINUTE), offset)
    assert apply(buckets, counted, _sample(MINUTE), 6)
    assert MinuteBucket.loads(table[bucket_key("shop", "1.0.0", MINUTE)]).requests == 6


def test_buckets_older_than_the_longest_window_are_deleted_as_time_moves_on() -> None:
    table, _ = _table([_sample(MINUTE - 200 + i) for i in range(200)])  # one per minute
    kept = sorted(int(k.rsplit(" ", 1)[1]) for k in table)
    assert kept == list(range(MINUTE - RETENTION_MINUTES, MINUTE))
    # a restarted processor (nothing known) deletes what it finds too
    fresh = Counted()
    apply(Buckets(table), fresh, _sample(MINUTE + 30), 10_000)
    assert min(int(k.rsplit(" ", 1)[1]) for k in table) == MINUTE + 30 - RETENTION_MINUTES + 1


def test_a_bucket_round_trips_through_its_changelog_bytes_and_keeps_its_fence() -> None:
    table, counted = _table(
        [_sample(MINUTE, duration=d, failed=d > 50, cost=d / 2) for d in (1.0, 20.0, 70.0)]
    )
    key = bucket_key("shop", "1.0.0", MINUTE)
    raw = table[key]
    recovered = Buckets({key: bytes(raw)})  # as recovery refills the table: equal bytes, another object
    back = recovered.get(key)
    assert back is not None and back.dumps() == raw
    assert (back.offset, back.requests, back.errors, back.costed) == (3, 3, 1, 3)
    assert not apply(recovered, counted, _sample(MINUTE), 3)  # the recovered fence holds
    assert apply(recovered, counted, _sample(MINUTE), 4)
    assert MinuteBucket.loads(recovered.table[key]).requests == 4


def test_a_decoded_bucket_is_not_used_once_the_table_holds_other_bytes() -> None:
    table, _ = _table([_sample(MINUTE) for _ in range(3)])
    key = bucket_key("shop", "1.0.0", MINUTE)
    buckets = Buckets(table)
    assert (bucket := buckets.get(key)) is not None and bucket.requests == 3
    older = MinuteBucket()
    older.apply(_sample(MINUTE), 1)
    table[key] = older.dumps()  # a recovery put another state there
    assert (bucket := buckets.get(key)) is not None and bucket.requests == 1


def test_kv_keys_are_agent_dot_version_with_unsafe_characters_escaped() -> None:
    assert version_key("shop", "1.2.3") == "shop.1.2.3"
    assert version_key("shop", "1.2.3-rc.1+build.5") == "shop.1.2.3-rc.1=2Bbuild.5"
    assert version_key("shop", "v 1/é") == "shop.v=201=2F=C3=A9"
    assert breaker_scope("shop", "1.2.3+build.5") == version_key("shop", "1.2.3+build.5")  # one escaping


def _event(**fields: Any) -> ExecutionFinished:
    base: dict[str, Any] = {
        "run_id": "r", "agent": "shop", "tenant": "t", "status": RunStatus.SUCCEEDED, "attempts": 1,
        "enqueued_at": NOW, "started_at": NOW - timedelta(seconds=2), "finished_at": NOW,
        "duration_ms": 2000.0,
    }  # fmt: skip
    return ExecutionFinished.model_validate({**base, **fields})


def test_the_cost_of_a_task_is_its_price_as_metering_bills_it() -> None:
    table = PriceTable(version="t", cpu_second=1.0, wall_second=0.5, gb_network=0.0,
                       models={"m": ModelPrice(input_per_1k=2.0, output_per_1k=4.0)})  # fmt: skip
    assert task_cost(_event(audit={"cpu_ms": 120}), table) == pytest.approx(0.12)  # CPU measured
    assert task_cost(_event(audit={"exit": 0}), table) == pytest.approx(1.0)  # else 2 s of wall time
    tokens = [{"model": "m", "input_tokens": 1000, "output_tokens": 500}]
    assert task_cost(_event(usage=tokens), table) == pytest.approx(1.0 + 2.0 + 2.0)
    carried = 10_000
    event = _event(audit={"cpu_ms": 120})
    assert task_cost(event, DEFAULT_PRICES, carried) == price(event, DEFAULT_PRICES, carried).total / NANO


def test_only_runs_a_version_ran_to_an_end_are_samples() -> None:
    assert sample_of(_event(status=RunStatus.EXPIRED), DEFAULT_PRICES) is None
    assert sample_of(_event(status=RunStatus.CANCELLED), DEFAULT_PRICES) is None
    failed = sample_of(_event(status=RunStatus.FAILED, version="2.0.0"), DEFAULT_PRICES)
    assert failed is not None and failed.failed and failed.version == "2.0.0" and failed.minute == MINUTE
    unversioned = sample_of(_event(duration_ms=None), DEFAULT_PRICES)
    assert unversioned is not None and unversioned.version == "unknown" and unversioned.duration_ms is None

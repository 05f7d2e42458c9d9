"""Pure parts of metering: prices, billing records, periods, budget definitions."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mesh.queue.billing import NANO, BillingRecord
from mesh.queue.budgets import Budget, Period, Quota, scope_key
from mesh.queue.runs import ExecutionFinished, ModelUsage
from streams.processors.metering import _copy, add, bill, in_period
from streams.processors.pricing import ModelPrice, PriceTable, price

AT = datetime(2026, 12, 3, 19, 30, tzinfo=UTC)
TABLE = PriceTable(version="t1", cpu_second=0.01, wall_second=0.001, gb_second=0.5, gb_written=2.0,
                   gb_network=4.0, models={"m": ModelPrice(input_per_1k=0.1, output_per_1k=0.3)})  # fmt: skip


def _event(**fields: object) -> ExecutionFinished:
    base: dict[str, object] = {"run_id": "r1", "agent": "a", "tenant": "t", "status": "succeeded",
                               "attempts": 1, "enqueued_at": AT, "finished_at": AT,
                               "duration_ms": 2000.0}  # fmt: skip
    return ExecutionFinished.model_validate(base | fields)


def test_a_measured_run_is_priced_on_cpu_memory_and_bytes_an_unmeasured_one_on_wall_time() -> None:
    audit = {"cpu_ms": 500, "memory_peak_bytes": 2 * 1024**3, "bytes_written": 1024**3}
    measured = price(_event(audit=audit), TABLE, carried=1024**3 // 2)
    assert measured.compute == round(0.5 * 0.01 * NANO) + round(2 * 2.0 * 0.5 * NANO)  # CPU s + GB x wall s
    assert measured.storage == 2 * NANO and measured.network == 2 * NANO
    assert measured.total == measured.compute + measured.storage + measured.network
    unmeasured = price(_event(), TABLE)
    assert unmeasured.compute == round(2.0 * 0.001 * NANO) and unmeasured.cpu_ms == 0


def test_tokens_are_priced_per_model_and_unknown_models_are_counted_not_priced() -> None:
    usage = [ModelUsage(model="m", input_tokens=2000, output_tokens=1000),
             ModelUsage(model="other", input_tokens=7, output_tokens=3)]  # fmt: skip
    priced = price(_event(usage=usage), TABLE)
    assert priced.tokens == round((2 * 0.1 + 1 * 0.3) * NANO)
    assert priced.unpriced_tokens == 10 and priced.input_tokens == 2007 and priced.output_tokens == 1003
    fallback = TABLE.model_copy(
        update={"models": {**TABLE.models, "*": ModelPrice(input_per_1k=1, output_per_1k=1)}}
    )
    assert price(_event(usage=usage), fallback).unpriced_tokens == 0


def test_a_billing_record_as_built_on_the_hot_path_is_a_valid_billing_record() -> None:
    record = bill(
        "finished-r1-0", _event(version="2.0.0", usage=[ModelUsage(model="m", input_tokens=5)]), TABLE, 300
    )
    parsed = BillingRecord.model_validate(record)
    assert parsed.id == "bill-finished-r1-0" and parsed.price_version == "t1" and parsed.version == "2.0.0"
    assert (
        parsed.amount_nano
        == parsed.compute_nano + parsed.tokens_nano + parsed.storage_nano + parsed.network_nano
    )
    assert set(record) == set(BillingRecord.model_fields)


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=50))
def test_usage_entries_sum_exactly_and_by_hour(cpu: list[int]) -> None:
    entry = _copy(None)
    records = [bill(f"e{i}", _event(audit={"cpu_ms": c}), TABLE) for i, c in enumerate(cpu)]
    for i, record in enumerate(records, start=1):
        add(entry, i, 0, record)
    assert entry["n"] == len(cpu) and entry["o"] == len(cpu)
    assert entry["cost"] == sum(r["amount_nano"] for r in records) == entry["h"][19] == sum(entry["h"])
    assert entry["hn"][19] == len(cpu)
    copy = _copy(entry)
    add(copy, len(cpu) + 1, 0, records[0])
    assert entry["n"] == len(cpu) and entry["hn"][19] == copy["hn"][19] - 1  # a copy shares no list


@pytest.mark.parametrize(("period", "at", "ident", "start", "end"), [
    (Period.HOUR, AT, "2026-12-03T19", datetime(2026, 12, 3, 19, tzinfo=UTC),
     datetime(2026, 12, 3, 20, tzinfo=UTC)),
    (Period.DAY, AT, "2026-12-03", datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
    (Period.WEEK, AT, "2026-W49", datetime(2026, 11, 30, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)),
    (Period.MONTH, AT, "2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
    (Period.WEEK, datetime(2027, 1, 1, tzinfo=UTC), "2026-W53", datetime(2026, 12, 28, tzinfo=UTC),
     datetime(2027, 1, 4, tzinfo=UTC)),
])  # fmt: skip
def test_periods_have_readable_ids_and_utc_bounds(
    period: Period, at: datetime, ident: str, start: datetime, end: datetime
) -> None:
    assert period.bounds(at) == (ident, start, end)


def test_a_days_usage_counts_towards_the_periods_that_hold_it() -> None:
    entry = _copy(None)
    entry["h"][19], entry["h"][3] = 5, 7
    assert in_period(Period.HOUR, AT, "2026-12-03", entry, "h") == 5
    assert in_period(Period.DAY, AT, "2026-12-03", entry, "h") == 12
    assert in_period(Period.DAY, AT, "2026-12-02", entry, "h") == 0
    assert in_period(Period.WEEK, AT, "2026-11-30", entry, "h") == 12
    assert in_period(Period.WEEK, AT, "2026-11-29", entry, "h") == 0
    assert in_period(Period.MONTH, AT, "2026-11-30", entry, "h") == 0


def test_budgets_and_quotas_need_a_scope_and_sane_numbers() -> None:
    assert Budget(id="b", tenant="acme", limit=1).thresholds == [80, 100]
    assert Budget(id="b", agent="a", tenant="t", limit=1, thresholds=[100, 50, 50]).thresholds == [50, 100]
    assert scope_key("a", "t") == "pair.a.t" and scope_key(None, "t") == "tenant.t"
    for bad in ({"id": "b", "limit": 1}, {"id": "B!", "tenant": "t", "limit": 1},
                {"id": "b", "tenant": "t", "limit": 0},
                {"id": "b", "tenant": "t", "limit": 1, "thresholds": [0]},
                {"id": "b", "tenant": "a.b", "limit": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            Budget.model_validate(bad)
    with pytest.raises(ValidationError):
        Quota(id="q", agent="a", max_daily=0)
    for limits in ({}, {"max_concurrent": 0}, {"max_concurrent": 10_001}):
        with pytest.raises(ValidationError):
            Quota.model_validate({"id": "q", "agent": "a", **limits})
    assert Quota(id="q", tenant="t", max_concurrent=5).max_daily is None

"""Concurrency quotas' pure parts: which scopes a task needs slots of, and which leases live."""

from __future__ import annotations

from typing import Any

from mesh.queue.budgets import Quota
from mesh.queue.slots import ConcurrencyQuotas, live


def quotas_of(*defined: Quota) -> ConcurrencyQuotas:
    """A ConcurrencyQuotas fed ``defined`` as its follower would (no server: nothing is read)."""
    seen: list[str] = []
    quotas = ConcurrencyQuotas(None, None, seen.append)  # type: ignore[arg-type]
    for quota in defined:
        quotas._quotas.values[quota.id] = quota
        quotas._quota_changed(quota.id, quota)
    assert seen == ["*"] * len([q for q in defined if q.max_concurrent])
    return quotas


def test_a_task_needs_a_slot_of_each_limited_scope_in_one_fixed_order_and_the_lowest_limit_counts() -> None:
    quotas = quotas_of(
        Quota(id="t1", tenant="acme", max_concurrent=5),
        Quota(id="t2", tenant="acme", max_concurrent=3),  # two on one scope: the lower holds
        Quota(id="a", agent="fuel", max_concurrent=10),
        Quota(id="p", agent="fuel", tenant="acme", max_concurrent=4),
        Quota(id="d", agent="fuel", max_daily=100),  # daily only: no slots
    )
    expected = [("agent.fuel", 10), ("pair.fuel.acme", 4), ("tenant.acme", 3)]
    assert quotas.applicable("fuel", "acme") == expected
    assert quotas.applicable("fuel", "other") == [("agent.fuel", 10)]
    assert quotas.applicable("grid", "other") == []


def test_nothing_limited_costs_nothing_and_ended_leases_do_not_count() -> None:
    assert quotas_of().applicable("fuel", "acme") == []
    held: dict[str, Any] = {"r1": ("w", 100.0), "r2": ("w", 200.0)}
    assert live(held, now=150.0) == {"r2": ("w", 200.0)}

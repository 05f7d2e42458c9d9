"""The task series' labels: tenants past the cap are one ``other`` series, and the
hot path resolves a label set's children once (mesh/queue/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from mesh.queue import metrics
from mesh.queue.runs import RunStatus


@pytest.fixture
def capped() -> Iterator[None]:
    metrics.cap_tenant_labels(2)
    try:
        yield
    finally:
        metrics.cap_tenant_labels(100)


def _tenants(agent: str) -> dict[str, float]:
    found = {}
    for family in REGISTRY.collect():
        if family.name == "af_tasks_enqueued":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels["agent"] == agent:
                    found[s.labels["tenant"]] = s.value
    return found


def test_tenants_past_the_cap_are_counted_as_other(capped: None) -> None:
    for tenant in ("acme", "beta", "gamma", "delta", "acme"):
        metrics.enqueued("capped", tenant, 2).inc()
        metrics.for_run("capped", "1.0.0", tenant, 2).succeeded.inc()
    assert _tenants("capped") == {"acme": 2, "beta": 1, "other": 2}
    finished = {"agent": "capped", "version": "1.0.0", "priority": "2", "outcome": "succeeded"}
    assert REGISTRY.get_sample_value("af_tasks_finished_total", {**finished, "tenant": "other"}) == 2
    # A cold-path count of a tenant past the cap lands there too.
    metrics.count_finished("capped", "1.0.0", "epsilon", 2, metrics.EXPIRED)
    expired = {**finished, "outcome": "expired", "tenant": "other"}
    assert REGISTRY.get_sample_value("af_tasks_finished_total", expired) == 1


def test_a_label_set_is_resolved_once_and_tenants_past_the_cap_share_one_entry(capped: None) -> None:
    first = metrics.for_run("cached", None, "acme", 0)
    assert metrics.for_run("cached", None, "acme", 0) is first
    assert metrics.for_run("cached", "2.0.0", "acme", 0) is not first  # another version
    metrics.for_run("cached", None, "beta", 0)
    overflow = [metrics.for_run("cached", None, f"t{i}", 0) for i in range(50)]
    assert all(series is overflow[0] for series in overflow)
    assert len(metrics._runs) == 4  # acme, acme 2.0.0, beta, other: not one per tenant seen


def test_the_outcomes_are_the_final_run_statuses() -> None:
    assert set(metrics.OUTCOMES) == {status.value for status in RunStatus if status.finished}

"""Every Prometheus metric the platform defines follows one scheme: the ``af_``
prefix, base units, ``_total`` on counters, and labels from a bounded set.

The test imports every module of the product packages (a metric is registered
when its module loads) and walks ``prometheus_client.REGISTRY``. A label that
could take a value per run, per request or per error message would make a
series per run: Prometheus' memory grows without bound, so such a label fails
here before it ships.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

PACKAGES = ("mesh", "agents", "gateway", "streams")

# Each label's values come from a set an operator controls and that does not grow
# with traffic: agents, versions, tenants, priorities, outcomes, the platform's own
# streams and durable consumers, worker pools, channels, budgets and quotas.
BOUNDED_LABELS = {
    "agent", "version", "tenant", "priority", "outcome", "worker", "channel", "channel_type",
    "direction", "stream", "consumer", "source", "budget", "limit", "kind", "currency",
    "from_state", "to_state",
}  # fmt: skip
# Values per run, request, message or error: never a label (put them in logs and traces).
UNBOUNDED_LABELS = {
    "run_id", "task_id", "id", "error", "message", "msg", "detail", "exception", "path", "url",
    "subject", "correlation_id", "trace_id", "span_id", "idempotency_key", "key", "token", "input",
    "user", "msg_id", "seq", "host", "pid",
}  # fmt: skip
# A label whose name is on neither list, allowed for one metric with the reason.
EXCEPTIONS = {
    # A fixed set of codes: expired, unknown_schema_version, invalid_payload, decode_error
    # (mesh.channels.subscriptions), not the exception's text.
    ("af_mesh_rejected", "reason"),
}
# Units that are not the base unit (seconds, bytes, ratios 0-1).
NOT_BASE_UNITS = re.compile(
    r"_(ms|millis|milliseconds|microseconds|us|ns|minutes|hours|days|kb|mb|gb|kilobytes|megabytes|percent)(_|$)"
)
TIME_WORDS = re.compile(r"_(latency|duration|age|delay|wait|time|lag)(_|$)")
# The client's own collectors (process_*, python_*) keep their standard names.
STANDARD = ("process_", "python_")


def _families() -> list[Metric]:
    for package in PACKAGES:
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, f"{package}."):
            importlib.import_module(info.name)
    return [f for f in REGISTRY.collect() if not f.name.startswith(STANDARD)]


@pytest.fixture(scope="module")
def families() -> list[Metric]:
    found = _families()
    assert len(found) > 30, "the walk should find every af_ metric; did a module fail to import?"
    return found


def test_every_metric_has_the_af_prefix(families: list[Metric]) -> None:
    assert [f.name for f in families if not f.name.startswith("af_")] == []


def test_counters_are_exposed_with_total_and_nothing_else_is(families: list[Metric]) -> None:
    wrong = []
    for family in families:
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if (family.type == "counter") != sample.name.endswith("_total"):
                wrong.append(sample.name)
    assert wrong == []


def test_metrics_are_in_base_units(families: list[Metric]) -> None:
    assert [f.name for f in families if NOT_BASE_UNITS.search(f.name)] == []
    # Anything about time is measured in seconds; a count of messages is not time.
    timed = [f.name for f in families if TIME_WORDS.search(f.name) and not f.name.endswith("_seconds")]
    assert [n for n in timed if not n.endswith(("_messages", "_ratio"))] == []
    histograms = [f.name for f in families if f.type == "histogram"]
    assert [n for n in histograms if not n.endswith(("_seconds", "_bytes"))] == []


def test_no_label_can_take_a_value_per_run_or_per_message(families: list[Metric]) -> None:
    unbounded, unknown = [], []
    for family in families:
        labels = {name for sample in family.samples for name in sample.labels} - {"le", "quantile"}
        labels |= set(getattr(_metric_of(family.name), "_labelnames", ()))
        for label in sorted(labels):
            if (family.name, label) in EXCEPTIONS:
                continue
            if label in UNBOUNDED_LABELS:
                unbounded.append(f"{family.name}{{{label}}}")
            elif label not in BOUNDED_LABELS:
                unknown.append(f"{family.name}{{{label}}}")
    assert unbounded == [], "labels that grow with traffic"
    assert unknown == [], "a new label: add it to BOUNDED_LABELS if its values are a bounded set"


def _metric_of(name: str) -> object:
    """The registered collector behind a family (its label names, before any series exists)."""
    names_to_collectors = REGISTRY._names_to_collectors  # the registry keeps no public lookup
    return names_to_collectors.get(name) or names_to_collectors.get(f"{name}_total")


def test_the_walk_fails_on_an_unbounded_label() -> None:
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("af_probe", "probe", ["run_id"], registry=registry).labels("r-1").inc()
    (family,) = [f for f in registry.collect() if f.name == "af_probe"]
    assert {name for s in family.samples for name in s.labels} & UNBOUNDED_LABELS == {"run_id"}

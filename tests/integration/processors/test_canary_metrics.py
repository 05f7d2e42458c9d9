"""The canary processor on a real nats-server: per-version counts, error rates,
percentiles and cost in ``af_canary_metrics``, checked against the same events offline."""

from __future__ import annotations

import faust
import pytest
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.queue.billing import NANO
from mesh.queue.runs import ExecutionFinished, RunStatus
from streams.processors.app import ProcessorConfig, build, prepare
from streams.processors.executions import read_finished
from streams.processors.pricing import DEFAULT_PRICES, price
from streams.processors.rollup import UNKNOWN_VERSION
from tests.helpers import eventually
from tests.integration.processors.canary_events import (
    Outcome,
    duration_of,
    exact_quantile,
    metrics,
    outcomes,
    publish,
    total,
)
from tests.integration.streams.streams_workers import running

MIN_SAMPLES = 20


async def _canary_app(url: str, **options: object) -> faust.App:
    partitions = await prepare(url)
    config = ProcessorConfig(url, partitions, session_timeout_s=4, heartbeat_s=0.5,
                             options={"min_samples": MIN_SAMPLES, **options})  # fmt: skip
    return build("canary", config)


async def test_percentiles_error_rates_and_cost_match_the_same_events_offline(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    versions = {  # version -> its runs: different speeds and error rates, one agent
        "1.0.0": outcomes("shop", "1.0.0", 800, median_ms=100, error_rate=0.02, cpu_every=3),
        "1.1.0-rc.1": outcomes("shop", "1.1.0-rc.1", 500, median_ms=250, error_rate=0.2),
        "2.0.0+build.7": outcomes("shop", "2.0.0+build.7", 300, median_ms=40, error_rate=0.5, cpu_every=1),
    }
    other = outcomes("other", "1.0.0", 50, median_ms=10)  # another agent, its own key
    events = [o for runs in zip(*versions.values(), strict=False) for o in runs]
    events += [o for runs in versions.values() for o in runs[len(versions["2.0.0+build.7"]) :]]
    not_counted = [  # a run the version did not run to an end says nothing about it
        Outcome("shop", "1.0.0", "shop-expired", 5.0, status=RunStatus.EXPIRED),
        Outcome("shop", "1.0.0", "shop-cancelled", 5.0, status=RunStatus.CANCELLED),
    ]
    published = await publish(own_js, events[:700] + not_counted)
    app = await _canary_app(own_nats.url)
    async with running(app):
        published |= await publish(own_js, events[700:] + other)
        for version, runs in versions.items():
            counted = lambda v=version, n=len(runs): _has(own_js, "shop", v, n)  # noqa: E731
            await eventually(counted, 60, f"{version} counted")
        await eventually(lambda: _has(own_js, "other", "1.0.0", 50), 30, "the other agent counted")

    for version, runs in versions.items():
        found = await metrics(own_js, "shop", version)
        assert found is not None and found.agent == "shop" and found.version == version
        window = found.windows["1h"]
        assert window.status == "ok"
        assert window.requests == len(runs)
        errors = sum(o.failed for o in runs)
        assert window.errors == errors and window.error_rate == pytest.approx(errors / len(runs))
        durations = [duration_of(o) for o in runs]
        for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
            exact = exact_quantile(durations, q)
            got = getattr(window, name)
            assert abs(got - exact) <= found.relative_accuracy * exact + 1e-9, (version, name, got, exact)
        # Each task as metering prices (and bills) it: its CPU time or its wall time, and the
        # bytes of its finished event, at the default price table.
        costs = [price(read(published[o.run]), DEFAULT_PRICES, len(published[o.run])).total for o in runs]
        assert window.cost_per_task == pytest.approx(sum(costs) / len(costs) / NANO)
        assert found.cost_unit == DEFAULT_PRICES.currency
    assert names.version_key("shop", "2.0.0+build.7") == "shop.2.0.0=2Bbuild.7"


def read(data: bytes) -> ExecutionFinished:
    finished = read_finished(data)
    assert finished is not None
    return finished.payload


async def _has(js: JetStreamContext, agent: str, version: str, n: int) -> bool:
    return total(await metrics(js, agent, version)) >= n


async def test_a_window_below_min_samples_says_insufficient_data_not_a_number(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    few = outcomes("shop", "3.0.0", MIN_SAMPLES - 1, median_ms=50, error_rate=0.5)
    enough = outcomes("shop", "3.1.0", MIN_SAMPLES, median_ms=50, error_rate=0.5)
    unversioned = outcomes("shop", None, 3, median_ms=50)
    app = await _canary_app(own_nats.url)
    async with running(app):
        await publish(own_js, few + enough + unversioned)
        await eventually(lambda: _has(own_js, "shop", "3.0.0", len(few)), 60, "3.0.0 counted")
        await eventually(lambda: _has(own_js, "shop", "3.1.0", len(enough)), 60, "3.1.0 counted")
        await eventually(lambda: _has(own_js, "shop", UNKNOWN_VERSION, 3), 60, "unversioned counted")
    below = await metrics(own_js, "shop", "3.0.0")
    assert below is not None
    for window in below.windows.values():
        assert window.status == "insufficient data"
        assert window.requests in (0, len(few))  # counts are facts; rates and percentiles are not given
        assert (window.error_rate, window.p50_ms, window.p95_ms, window.p99_ms, window.cost_per_task) == (
            None, None, None, None, None,
        )  # fmt: skip
    at = await metrics(own_js, "shop", "3.1.0")
    assert at is not None and at.min_samples == MIN_SAMPLES
    hour = at.windows["1h"]
    assert hour.status == "ok" and hour.requests == MIN_SAMPLES
    assert hour.error_rate is not None and hour.p99_ms is not None

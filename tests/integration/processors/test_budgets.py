"""Budgets and quotas on real servers: an alert at each threshold exactly once per
period (restarts included), a spent hard budget and a used-up quota refuse new
work at enqueue, until the limit is raised or the definition removed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.envelope import utcnow
from mesh.kv import current_entries
from mesh.queue.billing import NANO
from mesh.queue.budgets import Budget, BudgetExceeded, Period, Quota, QuotaExceeded
from mesh.queue.outcome import success_message
from mesh.queue.producer import TaskQueue, TaskSpec, build_task
from mesh.wire.protocol import parse_headers
from streams.processors.app import ProcessorConfig, build, prepare
from streams.processors.executions import read_finished
from streams.processors.pricing import DEFAULT_PRICES, price
from tests.helpers import eventually
from tests.integration.processors.test_executions_topic import publish_finished
from tests.integration.streams.streams_workers import running


async def _metering(url: str) -> object:
    partitions = await prepare(url)
    config = ProcessorConfig(url, partitions, session_timeout_s=4, heartbeat_s=0.5,
                             options={"flush_interval_s": 0.1})  # fmt: skip
    return build("metering", config)


async def _alerts(js: JetStreamContext, budget: str) -> dict[str, int]:
    """Alert events per subject for ``budget``."""
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=f"af.events.budget.alert.{budget}.>")
    return dict(info.state.subjects or {})


async def _one_cost(js: JetStreamContext) -> float:
    raw = await js.get_last_msg(names.STREAM_EVENTS, f"{names.FINISHED_PREFIX}.>")
    finished = read_finished(raw.data)
    assert finished is not None
    return price(finished.payload, DEFAULT_PRICES, len(raw.data)).total / NANO


@pytest.fixture
async def queue(own_nc: Client, own_js: JetStreamContext) -> AsyncIterator[TaskQueue]:
    async with TaskQueue(own_nc, own_js) as q:
        yield q


async def test_alerts_fire_once_per_threshold_and_a_spent_hard_budget_refuses_work(
    own_nats: NatsServer, own_js: JetStreamContext, queue: TaskQueue
) -> None:
    # Runs 10 to 25: inputs and results of one size, so every event costs the same.
    await publish_finished(own_js, "pricey", 1, tenant="acme", start=10)
    each = await _one_cost(own_js)
    kv = await own_js.key_value(names.BUCKET_BUDGETS)
    budget = Budget(id="acme-month", tenant="acme", period=Period.MONTH, limit=each * 10, hard=True)
    await kv.put("budget.acme-month", budget.model_dump_json().encode())
    period = Period.MONTH.bounds(utcnow())[0]
    await queue.enqueue(TaskSpec("pricey", {}, tenant="acme"))  # not spent yet

    app = await _metering(own_nats.url)
    async with running(app):
        await publish_finished(own_js, "pricey", 7, tenant="acme", start=11)  # 8 of 10: 80 %
        await eventually(lambda: _alerts(own_js, "acme-month"), 30, "the 80 % alert")
        assert await _alerts(own_js, "acme-month") == {f"af.events.budget.alert.acme-month.{period}.80": 1}
        await queue.enqueue(TaskSpec("pricey", {}, tenant="acme"))  # soft threshold: still open
        await publish_finished(own_js, "pricey", 4, tenant="acme", start=18)  # 12 of 10
        await eventually(lambda: _has(own_js, "acme-month", 100), 30, "the 100 % alert")
        await eventually(lambda: queue.guard is not None and queue.guard.spent(), 10, "the spent flag seen")
        with pytest.raises(BudgetExceeded) as refused:
            await queue.enqueue(TaskSpec("pricey", {}, tenant="acme"))
        details = refused.value.details
        assert details["budget"] == "acme-month" and details["period"] == period
        assert details["spend"] >= each * 10 and details["limit"] == pytest.approx(each * 10)
        with pytest.raises(BudgetExceeded):  # batches too, all or nothing
            await queue.enqueue_batch(
                [TaskSpec("other", {}, tenant="globex"), TaskSpec("pricey", {}, tenant="acme")]
            )
        await queue.enqueue(TaskSpec("pricey", {}, tenant="globex"))  # another tenant: not concerned
        await publish_finished(own_js, "pricey", 3, tenant="acme", start=22)  # more spend: no new alert
    # A restarted processor re-reads what it did not commit and re-evaluates: still one alert each.
    app = await _metering(own_nats.url)
    async with running(app):
        await publish_finished(own_js, "pricey", 1, tenant="acme", start=25)
        await eventually(lambda: _partials(own_js, "acme-month", period, each * 16), 30, "all 16 counted")
    alerts = await _alerts(own_js, "acme-month")
    assert alerts == {f"af.events.budget.alert.acme-month.{period}.80": 1,
                      f"af.events.budget.alert.acme-month.{period}.100": 1}  # fmt: skip
    # Raising the limit lifts the refusal.
    app = await _metering(own_nats.url)
    async with running(app):
        raised = budget.model_copy(update={"limit": each * 100})
        await kv.put("budget.acme-month", raised.model_dump_json().encode())
        await eventually(lambda: not queue.guard.spent(), 30, "the flag removed")  # type: ignore[union-attr]
        await queue.enqueue(TaskSpec("pricey", {}, tenant="acme"))


async def test_a_daily_quota_refuses_the_agents_work_once_used_up(
    own_nats: NatsServer, own_js: JetStreamContext, queue: TaskQueue
) -> None:
    kv = await own_js.key_value(names.BUCKET_BUDGETS)
    await kv.put("quota.q-lim", Quota(id="q-lim", agent="limited", max_daily=5).model_dump_json().encode())
    app = await _metering(own_nats.url)
    async with running(app):
        await publish_finished(own_js, "limited", 4, tenant="acme")
        await publish_finished(own_js, "limited", 1, tenant="globex", start=4)
        await eventually(lambda: queue.guard is not None and queue.guard.spent(), 30, "the quota flag seen")
        with pytest.raises(
            QuotaExceeded, match=r"quota 'q-lim' of agent limited is used up .* 5 of 5 executions"
        ):
            await queue.enqueue(TaskSpec("limited", {}, tenant="initech"))
        await queue.enqueue(TaskSpec("unlimited", {}, tenant="initech"))


async def _has(js: JetStreamContext, budget: str, pct: int) -> bool:
    return any(s.endswith(f".{pct}") for s in await _alerts(js, budget))


async def _partials(js: JetStreamContext, ident: str, period: str, want: float) -> bool:
    """Do the partitions' parts of ``ident``'s spend in ``period`` add up to ``want``?"""
    kv = await js.key_value(names.BUCKET_BUDGETS)
    entries = await current_entries(js, kv, names.BUCKET_BUDGETS, f"partial.{ident}.{period}.*")
    return sum(json.loads(e.value or b"0")["used"] for e in entries) == round(want * NANO)


async def test_a_spend_rate_far_above_the_agents_trailing_average_is_one_anomaly_event(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    now = utcnow()
    hour = Period.HOUR.bounds(now)[0]
    # One run in each of the previous 24 hours, then 30 in this one: 30 x the average.
    for back in range(1, 25):
        await publish_at(own_js, "bursty", f"past-{back:02d}", now - timedelta(hours=back))
    partitions = await prepare(own_nats.url)
    options = {"flush_interval_s": 0.1, "anomaly_min_spend": 0, "anomaly_multiple": 10}
    app = build("metering", ProcessorConfig(own_nats.url, partitions, session_timeout_s=4, heartbeat_s=0.5,
                                            options=options))  # fmt: skip
    async with running(app):
        for i in range(5):
            await publish_at(own_js, "bursty", f"now-{i:02d}", now)
        await eventually(lambda: _counted(app, "bursty", 29), 10, "the first 5 of this hour counted")
        assert await _anomalies(own_js, "agent") == {}  # 5 x the average: under 10 x (as far as a flush got)
        for i in range(5, 30):
            await publish_at(own_js, "bursty", f"now-{i:02d}", now)
        found = await eventually(lambda: _anomalies(own_js, "agent"), 30, "the anomaly event")
        assert found == {f"af.events.cost.anomaly.agent.bursty.{hour}": 1}
        for i in range(30, 40):  # more of the same hour: no second event
            await publish_at(own_js, "bursty", f"now-{i:02d}", now)
        await eventually(lambda: _counted(app, "bursty", 64), 30, "all counted")
    assert await _anomalies(own_js, "agent") == {f"af.events.cost.anomaly.agent.bursty.{hour}": 1}


async def test_a_tenants_spend_rate_summed_over_its_agents_partitions_is_its_own_anomaly(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    """A tenant whose agents each spend too little to be anomalous (under the minimum
    spend), but together far above the tenant's trailing average: one tenant event,
    its spend summed over the partitions its agents' spend is in."""
    now = utcnow()
    hour = Period.HOUR.bounds(now)[0]
    agents = ["surge-a", "surge-b", "surge-c", "surge-d"]
    for back in range(1, 25):  # one run an hour of one agent: the tenant's average is one run
        await publish_at(own_js, agents[0], f"past-{back:02d}", now - timedelta(hours=back), tenant="surge")
    one_run = await _one_cost(own_js)
    partitions = await prepare(own_nats.url)
    # 2 runs of an agent this hour are under the minimum spend; the tenant's 8 are over it,
    # and 8 x its average (over 5 x).
    options = {"flush_interval_s": 0.1, "anomaly_min_spend": 4.5 * one_run, "anomaly_multiple": 5}
    app = build("metering", ProcessorConfig(own_nats.url, partitions, session_timeout_s=4, heartbeat_s=0.5,
                                            options=options))  # fmt: skip
    async with running(app):
        for agent in agents:
            for i in range(2):
                await publish_at(own_js, agent, f"now-{i}", now, tenant="surge")
        found = await eventually(lambda: _anomalies(own_js, "tenant"), 30, "the tenant's anomaly event")
        assert found == {f"af.events.cost.anomaly.tenant.surge.{hour}": 1}
        assert len(set(_usage(app, "surge-", "p"))) > 1, (
            "the tenant's agents are in one partition: nothing summed"
        )
        await eventually(lambda: sum(_usage(app, "surge-", "n")) >= 32, 30, "all counted")
    assert await _anomalies(own_js, "agent") == {}  # no agent alone was anomalous
    assert await _anomalies(own_js, "tenant") == {f"af.events.cost.anomaly.tenant.surge.{hour}": 1}


async def publish_at(js: JetStreamContext, agent: str, run: str, at: datetime, tenant: str = "acme") -> None:
    task = build_task(TaskSpec(agent, {"i": 0}, tenant=tenant), f"{agent}-{run}")
    subject, data, headers = success_message(task, agent, 1, at, at, {"i": 0})
    await js.publish(subject, data, headers=parse_headers(headers))


async def _anomalies(js: JetStreamContext, scope: str) -> dict[str, int]:
    """Anomaly events per subject of ``scope`` (agent or tenant)."""
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=f"af.events.cost.anomaly.{scope}.>")
    return dict(info.state.subjects or {})


def _usage(app: object, prefix: str, field: str) -> list[int]:
    """``field`` of each usage entry whose key starts with ``prefix``."""
    table = app.tables["metering-usage"]  # type: ignore[attr-defined]
    return [v[field] for k, v in table.data.items() if v and k.startswith(prefix)]


def _counted(app: object, agent: str, n: int) -> bool:
    table = app.tables["metering-usage"]  # type: ignore[attr-defined]
    return sum(v["n"] for k, v in table.data.items() if v and k.startswith(agent + "/")) >= n

"""The gauges the dashboards and alerts read besides the task counters, on a real
nats-server: the oldest waiting task per lane, JetStream stream sizes and durable
consumer lag, the account's storage, budgets, canary versions, and whether NATS is connected."""

from __future__ import annotations

from datetime import UTC, datetime

from nats.js.api import AckPolicy, ConsumerConfig

from mesh import names
from mesh.canary import VersionMetrics, WindowMetrics
from mesh.queue import metrics
from mesh.queue.budgets import Budget, Quota, put_limit, remove_limit
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.stats import canary_stats, jetstream_stats, limit_stats, queue_stats
from mesh.queue.worker import AgentQueueConfig, ensure_lane
from mesh.wire.connection import CONNECTED, RECONNECTS
from tests.helpers import eventually, unique

from .conftest import Own


def _value(gauge: object, *labels: str) -> float | None:
    """The series' value, or None when it does not exist (without creating it)."""
    for family in gauge.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if tuple(sample.labels.values()) == labels:
                return float(sample.value)
    return None


async def test_oldest_waiting_task_age_grows_and_is_zero_once_the_task_is_delivered(own: Own) -> None:
    agent = unique("oldest")
    cfg = AgentQueueConfig(agent)
    for p in cfg.priorities:
        await ensure_lane(own.js, cfg, p)
    async with TaskQueue(own.nc, own.js) as queue:
        await queue.enqueue(TaskSpec(agent, {}))  # priority 2, the default

    async def age() -> float:
        await queue_stats(own.js)
        return _value(metrics.QUEUE_OLDEST_AGE, agent, "2") or 0.0

    async def a_second_old() -> bool:
        return await age() >= 1.0

    await eventually(a_second_old, timeout=10, what="the task's age reaches 1 s")
    assert _value(metrics.QUEUE_OLDEST_AGE, agent, "0") == 0.0  # an empty lane
    # Delivered (held, not acked): no longer waiting.
    sub = await own.js.pull_subscribe_bind(names.task_consumer(agent, 2), names.STREAM_TASKS)
    (msg,) = await sub.fetch(1, timeout=5)
    assert await age() == 0.0
    await msg.ack()


async def test_jetstream_gauges_show_stream_sizes_durable_consumer_lag_and_storage(own: Own) -> None:
    durable = unique("lagging")
    await own.js.add_consumer(
        names.STREAM_EVENTS, ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT)
    )
    # An ephemeral consumer (a watcher's: a random name) is left out.
    ephemeral = await own.js.pull_subscribe(f"{names.EVENTS_PREFIX}.>", stream=names.STREAM_EVENTS)
    for i in range(3):
        await own.js.publish(f"{names.EVENTS_PREFIX}.test.{durable}.{i}", b"{}")
    await jetstream_stats(own.js)
    assert _value(metrics.CONSUMER_PENDING, names.STREAM_EVENTS, durable) == 3
    assert _value(metrics.CONSUMER_ACK_PENDING, names.STREAM_EVENTS, durable) == 0
    ephemeral_name = (await ephemeral.consumer_info()).name
    assert _value(metrics.CONSUMER_PENDING, names.STREAM_EVENTS, ephemeral_name) is None
    assert (_value(metrics.STREAM_MESSAGES, names.STREAM_EVENTS) or 0) >= 3
    assert (_value(metrics.STREAM_BYTES, names.STREAM_EVENTS) or 0) > 0
    assert (_value(metrics.JETSTREAM_STORAGE) or 0) > 0
    assert _value(metrics.JETSTREAM_STORAGE_LIMIT) == 0  # the embedded server sets no account limit
    # A consumer deleted is a series gone, not a lag frozen at its last value.
    await ephemeral.unsubscribe()
    await own.js.delete_consumer(names.STREAM_EVENTS, durable)
    await jetstream_stats(own.js)
    assert _value(metrics.CONSUMER_PENDING, names.STREAM_EVENTS, durable) is None


async def test_budget_gauges_follow_the_limits_in_kv(own: Own) -> None:
    budget, quota = unique("budget"), unique("quota")
    await put_limit(own.js, Budget(id=budget, tenant="acme", limit=250))
    await put_limit(own.js, Quota(id=quota, agent="a", max_daily=10))
    await limit_stats(own.js)
    assert _value(metrics.BUDGET_LIMIT, budget) == 250
    assert _value(metrics.LIMIT_SPENT, budget, "budget") == 0
    assert _value(metrics.LIMIT_SPENT, quota, "quota") == 0
    await remove_limit(own.js, "budget", budget)
    await limit_stats(own.js)
    assert _value(metrics.BUDGET_LIMIT, budget) is None
    assert _value(metrics.LIMIT_SPENT, budget, "budget") is None


async def test_canary_gauges_show_each_versions_five_minute_window(own: Own) -> None:
    agent = unique("canary")
    kv = await own.js.key_value(names.BUCKET_CANARY_METRICS)

    def window(requests: int, errors: int, p99_ms: float | None) -> WindowMetrics:
        status = "ok" if p99_ms is not None else "insufficient data"
        return WindowMetrics(minutes=5, requests=requests, errors=errors, status=status, p99_ms=p99_ms)

    for version, w in (("1.0.0", window(40, 2, 250.0)), ("1.1.0", window(5, 1, None))):
        found = VersionMetrics(agent=agent, version=version, as_of=datetime.now(UTC), min_samples=20,
                               windows={"1m": w, "5m": w})  # fmt: skip
        await kv.put(names.version_key(agent, version), found.model_dump_json().encode())
    await canary_stats(own.js)
    assert _value(metrics.CANARY_REQUESTS, agent, "1.0.0") == 40
    assert _value(metrics.CANARY_ERRORS, agent, "1.0.0") == 2
    assert _value(metrics.CANARY_P99, agent, "1.0.0") == 0.25  # seconds
    assert _value(metrics.CANARY_REQUESTS, agent, "1.1.0") == 5
    assert _value(metrics.CANARY_P99, agent, "1.1.0") is None  # below the minimum samples
    await kv.delete(names.version_key(agent, "1.1.0"))
    await canary_stats(own.js)
    assert _value(metrics.CANARY_REQUESTS, agent, "1.1.0") is None


async def test_nats_connected_reads_zero_while_the_server_is_down_and_counts_the_reconnect(own: Own) -> None:
    def connected() -> float | None:
        return _value(CONNECTED)

    before, reconnects = connected(), _value(RECONNECTS)
    assert before is not None and reconnects is not None
    own.server.stop()
    await eventually(lambda: connected() == 0, timeout=10, what="af_nats_connected reads 0")
    own.server.start()
    await eventually(lambda: own.nc.is_connected, timeout=20, what="the connection is back")
    assert connected() == before
    await eventually(lambda: (_value(RECONNECTS) or 0) > reconnects, timeout=5, what="the reconnect counted")

"""Prometheus metrics of the mesh layer, in the registry of the process that counts them.

Worker pools run in processes of their own: the gateway's ``/metrics`` merges
their registries into its own (``gateway/worker_metrics.py``), each pool's
samples labelled ``worker``; sum over it. Labels are created on first use, so
a series may read 0 in a process that does not count it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AgentMetrics",
    "BUDGET_LIMIT",
    "CANARY_ERRORS",
    "CANARY_P99",
    "CANARY_REQUESTS",
    "LIMIT_SPENT",
    "CONSUMER_ACK_PENDING",
    "CONSUMER_PENDING",
    "JETSTREAM_STORAGE",
    "JETSTREAM_STORAGE_LIMIT",
    "QUEUE_OLDEST_AGE",
    "SOURCE_LAG",
    "STREAM_BYTES",
    "STREAM_MESSAGES",
    "TASKS_IN_PROGRESS",
    "BREAKER_REFUSED",
    "BREAKER_STATE",
    "QUOTA_WAITS",
    "TASKS_PLACED_ELSEWHERE",
    "for_agent",
    "QUEUE_ACK_PENDING",
    "DLQ_SIZE",
    "QUEUE_DEPTH",
    "TASKS_COMPLETED",
    "TASKS_DEAD_LETTERED",
    "TASKS_ENQUEUED",
    "TASKS_EXPIRED",
    "TASKS_FAILED",
    "TASKS_RETRIED",
    "TASK_RUN",
    "TASK_WAIT",
]

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TASKS_ENQUEUED = Counter("af_tasks_enqueued_total", "Tasks accepted onto the queue", ["agent"])
TASKS_COMPLETED = Counter("af_tasks_completed_total", "Tasks that succeeded", ["agent"])
TASKS_FAILED = Counter("af_tasks_failed_total", "Task attempts that raised", ["agent"])
TASKS_RETRIED = Counter("af_tasks_retried_total", "Tasks scheduled for another attempt", ["agent"])
TASKS_DEAD_LETTERED = Counter("af_tasks_dead_lettered_total", "Tasks moved to the DLQ", ["agent"])
TASK_WAIT = Histogram("af_task_wait_seconds", "Enqueue to start", ["agent"], buckets=_FAST)
TASK_RUN = Histogram("af_task_run_seconds", "Handler run time", ["agent"], buckets=_FAST)
QUEUE_DEPTH = Gauge("af_queue_depth", "Tasks waiting", ["agent", "priority"])
QUEUE_ACK_PENDING = Gauge(
    "af_queue_ack_pending_ratio",
    "num_ack_pending / max_ack_pending per lane; at 1.0 JetStream silently stops delivering",
    ["agent", "priority"],
)
DLQ_SIZE = Gauge("af_dlq_size", "Dead letters waiting per agent", ["agent"])
BREAKER_STATE = Gauge(
    "af_fleet_breaker_state",
    "The agent's fleet-wide circuit breaker as this process follows it: 0 closed, 1 half-open, 2 open",
    ["agent"],
)
QUOTA_WAITS = Counter(
    "af_quota_slot_waits_total",
    "Tasks that found a fleet-wide concurrency quota full when taken: waited here, or returned",
    ["agent", "outcome"],
)
BREAKER_REFUSED = Counter(
    "af_fleet_breaker_refused_total",
    "Deliveries handed back unstarted: the breaker is half-open, no trial left",
    ["agent"],
)
TASKS_EXPIRED = Counter("af_tasks_expired_total", "Tasks whose TTL passed while queued", ["agent"])
TASKS_PLACED_ELSEWHERE = Counter(
    "af_tasks_placed_elsewhere_total",
    "Deliveries handed back unstarted: the tenant's config puts them on other workers "
    "(kind: pinned, a pinned version; dedicated, the agent's own workers)",
    ["agent", "kind"],
)
TASKS_IN_PROGRESS = Gauge("af_worker_tasks_in_progress", "Tasks this worker pool is running now", ["agent"])
QUEUE_OLDEST_AGE = Gauge(
    "af_queue_oldest_task_age_seconds",
    "Age of the oldest task waiting (not yet delivered) per lane; 0 when none waits",
    ["agent", "priority"],
)
# JetStream health, from the stream and consumer info the queue maintenance reads
# every 5 s. Durable consumers only: ephemeral ones (KV watchers) have random names.
STREAM_MESSAGES = Gauge("af_jetstream_stream_messages", "Messages stored in the stream", ["stream"])
STREAM_BYTES = Gauge("af_jetstream_stream_bytes", "Bytes stored in the stream", ["stream"])
CONSUMER_PENDING = Gauge(
    "af_jetstream_consumer_pending_messages",
    "Messages a durable consumer has not been delivered yet (its lag)",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "af_jetstream_consumer_ack_pending_messages",
    "Messages delivered to a durable consumer and not acknowledged yet",
    ["stream", "consumer"],
)
SOURCE_LAG = Gauge(
    "af_jetstream_source_lag_messages",
    "Messages a stream has yet to copy from a source (the processors' topics source AF_EVENTS)",
    ["stream", "source"],
)
BUDGET_LIMIT = Gauge(
    "af_budget_limit", "A budget's spend limit per period, in the price table's currency", ["budget"]
)
LIMIT_SPENT = Gauge(
    "af_limit_spent",
    "1 while a hard budget or a quota is used up for its period (new work refused)",
    ["limit", "kind"],
)
# Per agent version, from af_canary_metrics (the canary processor's 5-minute window).
_VERSION = ["agent", "version"]
CANARY_REQUESTS = Gauge("af_canary_requests", "Executions of the version in the last 5 minutes", _VERSION)
CANARY_ERRORS = Gauge("af_canary_errors", "Failed executions of the version in the last 5 minutes", _VERSION)
CANARY_P99 = Gauge(
    "af_canary_duration_p99_seconds",
    "p99 duration of the version over the last 5 minutes; absent below the processor's minimum samples",
    _VERSION,
)
JETSTREAM_STORAGE = Gauge("af_jetstream_storage_bytes", "File storage the account uses")
JETSTREAM_STORAGE_LIMIT = Gauge(
    "af_jetstream_storage_limit_bytes",
    "File storage the account may use; 0: no limit of its own (the server's disk is the limit)",
)


@dataclass(frozen=True, slots=True)
class AgentMetrics:
    """One agent's hot-path series, resolved once (``labels()`` costs a lock and a lookup)."""

    enqueued: Any
    completed: Any
    wait: Any
    run: Any


@cache
def for_agent(agent: str) -> AgentMetrics:
    return AgentMetrics(
        enqueued=TASKS_ENQUEUED.labels(agent), completed=TASKS_COMPLETED.labels(agent),
        wait=TASK_WAIT.labels(agent), run=TASK_RUN.labels(agent),
    )  # fmt: skip

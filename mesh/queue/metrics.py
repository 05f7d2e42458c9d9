"""Prometheus metrics of the mesh layer, in the registry of the process that counts them.

Worker pools run in processes of their own: the gateway's ``/metrics`` merges
their registries into its own (``gateway/worker_metrics.py``), each pool's
samples labelled ``worker``; sum over it. Labels are created on first use, so
a series may read 0 in a process that does not count it.

The task series carry one label set, ``agent``, ``version`` (the agent version
that ran it; empty where none did, e.g. an expiry), ``tenant`` and
``priority``; ``af_tasks_finished_total`` adds the run's ``outcome`` (the
final :class:`~mesh.queue.runs.RunStatus`: succeeded, failed, expired,
cancelled). Tenants are registered rows, so their number is bounded by an
operator; still, past :func:`cap_tenant_labels`' cap (100 distinct values per
process by default) further tenants are counted as ``tenant="other"``, so a
bug or an abuse cannot grow Prometheus without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "OTHER_TENANT",
    "OUTCOMES",
    "RunSeries",
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
    "cap_tenant_labels",
    "count_attempt_failed",
    "count_finished",
    "count_retried",
    "enqueued",
    "for_run",
    "QUEUE_ACK_PENDING",
    "DLQ_SIZE",
    "QUEUE_DEPTH",
    "TASK_ATTEMPTS_FAILED",
    "TASKS_ENQUEUED",
    "TASKS_FINISHED",
    "TASKS_RETRIED",
    "TASK_RUN",
    "TASK_WAIT",
]

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# The outcomes of af_tasks_finished_total: a run's final RunStatus values.
SUCCEEDED, FAILED, EXPIRED, CANCELLED = "succeeded", "failed", "expired", "cancelled"
OUTCOMES: Final = (SUCCEEDED, FAILED, EXPIRED, CANCELLED)
OTHER_TENANT: Final = "other"  # the tenants past the cap
_TASK = ["agent", "version", "tenant", "priority"]

# The version is not known at enqueue (a worker of whichever version takes it runs it).
TASKS_ENQUEUED = Counter(
    "af_tasks_enqueued_total", "Tasks accepted onto the queue", ["agent", "tenant", "priority"]
)
TASKS_FINISHED = Counter(
    "af_tasks_finished_total",
    "Runs that ended, by outcome: succeeded; failed (attempts used up or a permanent error: "
    "dead-lettered); expired (TTL passed before a start); cancelled",
    [*_TASK, "outcome"],
)
TASK_ATTEMPTS_FAILED = Counter("af_task_attempts_failed_total", "Task attempts that raised", _TASK)
TASKS_RETRIED = Counter("af_tasks_retried_total", "Tasks scheduled for another attempt", _TASK)
TASK_WAIT = Histogram("af_task_wait_seconds", "Enqueue to start", _TASK, buckets=_FAST)
TASK_RUN = Histogram("af_task_run_seconds", "Handler run time", _TASK, buckets=_FAST)
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


class _TenantLabels:
    """The first ``cap`` distinct tenants seen in this process are labels of their
    own; later ones are :data:`OTHER_TENANT`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.seen: set[str] = set()

    def label(self, tenant: str) -> str:
        if tenant in self.seen:
            return tenant
        if len(self.seen) < self.cap:
            self.seen.add(tenant)
            return tenant
        return OTHER_TENANT


_tenants = _TenantLabels(100)


@dataclass(frozen=True, slots=True)
class RunSeries:
    """The hot-path series of one (agent, version, tenant, priority), resolved once:
    ``labels()`` costs a lock and a lookup, and runs once per task otherwise."""

    wait: Any
    run: Any
    succeeded: Any


_RunKey = tuple[str, str | None, str, int]
_runs: dict[_RunKey, RunSeries] = {}
_enqueued: dict[tuple[str, str, int], Any] = {}


def cap_tenant_labels(cap: int) -> None:
    """Label at most ``cap`` distinct tenants in this process (``AF_METRICS_TENANT_CAP``);
    called once at a process's start, before anything is counted (and by tests)."""
    global _tenants
    _tenants = _TenantLabels(cap)
    _runs.clear()
    _enqueued.clear()


def for_run(agent: str, version: str | None, tenant: str, priority: int) -> RunSeries:
    """The series a worker observes a run's attempt in: one dict lookup per task."""
    series = _runs.get((agent, version, tenant, priority))
    if series is None:
        label = _tenants.label(tenant)
        series = _runs.get((agent, version, label, priority))
        if series is None:  # a tenant past the cap is cached under "other" only: memory stays bounded
            values = (agent, version or "", label, str(priority))
            series = _runs[(agent, version, label, priority)] = RunSeries(
                TASK_WAIT.labels(*values), TASK_RUN.labels(*values),
                TASKS_FINISHED.labels(*values, SUCCEEDED),
            )  # fmt: skip
    return series


def enqueued(agent: str, tenant: str, priority: int) -> Any:
    """The enqueued counter of (agent, tenant, priority), resolved once."""
    counter = _enqueued.get((agent, tenant, priority))
    if counter is None:
        label = _tenants.label(tenant)
        counter = _enqueued.get((agent, label, priority))
        if counter is None:
            counter = _enqueued[(agent, label, priority)] = TASKS_ENQUEUED.labels(agent, label, str(priority))
    return counter


def _task_labels(agent: str, version: str | None, tenant: str, priority: int) -> tuple[str, str, str, str]:
    return agent, version or "", _tenants.label(tenant), str(priority)


def count_finished(agent: str, version: str | None, tenant: str, priority: int, outcome: str) -> None:
    """One run ended with ``outcome`` (cold paths: a success is :func:`for_run`'s)."""
    TASKS_FINISHED.labels(*_task_labels(agent, version, tenant, priority), outcome).inc()


def count_attempt_failed(agent: str, version: str | None, tenant: str, priority: int) -> None:
    TASK_ATTEMPTS_FAILED.labels(*_task_labels(agent, version, tenant, priority)).inc()


def count_retried(agent: str, version: str | None, tenant: str, priority: int) -> None:
    TASKS_RETRIED.labels(*_task_labels(agent, version, tenant, priority)).inc()

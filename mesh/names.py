"""Every stream, subject, consumer and bucket name the platform uses, in one place
(and the data dir's state file).

Names are human-readable so ``nats stream ls``, ``nats sub 'af.events.>'`` and
``nats kv watch af_runs`` explain themselves; the README lists them all.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AGENT_KEY_RE",
    "CONFIG_PREFIX",
    "config_key",
    "version_key",
    "RUN_ID_RE",
    "BUCKET_CHANNELS",
    "JS_API_PREFIX",
    "BUCKET_CONFIG",
    "BUCKET_IDEMPOTENCY",
    "BUCKET_BREAKERS",
    "BUCKET_BUDGETS",
    "BUCKET_CANARY_METRICS",
    "BUCKET_LOCKS",
    "BUCKET_RUNS",
    "BUCKET_SCHEDULES",
    "BUCKET_SLOTS",
    "OBJECTS_PACKAGES",
    "CONSUMER_BILLING_RECORDER",
    "CONSUMER_DLQ_MOVER",
    "CONSUMER_RECORDER",
    "CONSUMER_RUN_INDEX",
    "CONSUMER_SCHEDULE_RELAY",
    "DURABLE_CHANNEL_PREFIX",
    "EPHEMERAL_CHANNEL_PREFIX",
    "STREAM_ADVISORIES",
    "STREAM_CHANNELS",
    "STREAM_DLQ",
    "STREAM_BILLING",
    "STREAM_EVENTS",
    "STREAM_EXECUTIONS",
    "STREAM_LOGS",
    "STREAM_SCHEDULES",
    "STREAM_TASKS",
    "STATE_FILE",
    "breaker_subject",
    "cancel_subject",
    "channel_consumer",
    "dlq_subject",
    "execution_partition_subject",
    "finished_subject",
    "kv_stream",
    "log_subject",
    "kv_subject",
    "rpc_subject",
    "schedule_def_subject",
    "schedule_fire_subject",
    "task_consumer",
    "task_subject",
    "trigger_consumer",
]

STREAM_TASKS: Final = "AF_TASKS"  # work queue: af.tasks.<agent>.<priority>
STREAM_EVENTS: Final = "AF_EVENTS"  # facts: af.events.<kind>.<agent>[.<run id>]
STREAM_SCHEDULES: Final = "AF_SCHEDULES"  # af.schedules.def.<name>, af.schedules.fire.<name>
STREAM_ADVISORIES: Final = "AF_ADVISORIES"  # captured MAX_DELIVERIES advisories of AF_TASKS
MAX_DELIVERIES_ADVISORY: Final = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM_TASKS}.>"
STREAM_LOGS: Final = "AF_LOGS"  # the fleet's log records, JSON: af.logs.<process>
STREAM_DLQ: Final = "AF_DLQ"  # dead letters: af.dlq.tasks.<agent>, af.dlq.channels.<channel>
# Finished executions partitioned by agent, sourced from AF_EVENTS by the server:
# af.executions.<partition>.<agent>.<run id>; the stream processors' input (streams.processors)
STREAM_EXECUTIONS: Final = "AF_EXECUTIONS"
STREAM_BILLING: Final = "AF_BILLING"  # one priced record per execution: af.billing.<tenant>.<agent>

BUCKET_RUNS: Final = "af_runs"  # run id -> run state (24 h)
BUCKET_IDEMPOTENCY: Final = "af_idempotency"  # idempotency key -> run id (24 h)
# What the platform obeys live: dispatch gates (mesh.queue.gates) and agent
# configuration (config.<agent>[.<tenant>], mesh.queue.agent_config)
BUCKET_CONFIG: Final = "af_config"
CONFIG_PREFIX: Final = "config."  # in af_config: an agent's config, and its tenants' overrides
BUCKET_LOCKS: Final = "af_locks"  # leases with per-key TTL (mesh.locks), for the lifecycle manager
BUCKET_SCHEDULES: Final = "af_schedules"  # schedule and trigger definitions
BUCKET_CHANNELS: Final = "af_channels"  # live channel subscribers (heartbeat TTL)
# Decisions the stream processors compute and workers and the gateway obey (streams.processors)
BUCKET_BREAKERS: Final = "af_breakers"  # fleet-wide circuit breakers, per agent
BUCKET_BUDGETS: Final = "af_budgets"  # budgets and quotas: definitions, and which are spent
BUCKET_SLOTS: Final = "af_slots"  # concurrency quotas: who holds each limited scope's slots
BUCKET_CANARY_METRICS: Final = "af_canary_metrics"  # per agent version: counts, errors, percentiles
OBJECTS_PACKAGES: Final = "af_packages"  # object store: the hub's package archives (agents.hub)
STREAM_CHANNELS: Final = "AF_CHANNELS"  # durable channels: af.ch.<channel>
DURABLE_CHANNEL_PREFIX: Final = "af.ch"
EPHEMERAL_CHANNEL_PREFIX: Final = "af.eph"

TASKS_PREFIX: Final = "af.tasks"
EVENTS_PREFIX: Final = "af.events"
DLQ_PREFIX: Final = "af.dlq"
LOGS_PREFIX: Final = "af.logs"
EXECUTIONS_PREFIX: Final = "af.executions"
BILLING_PREFIX: Final = "af.billing"
SCHEDULES_PREFIX: Final = "af.schedules"
CANCEL_PREFIX: Final = "af.control.cancel"  # core NATS (no stream): "stop run <id> if you hold it"
INFLIGHT_PREFIX: Final = "af.control.inflight"  # core NATS: "how many of <agent>'s tasks do you hold?"
RPC_PREFIX: Final = "af.rpc"  # core NATS requests: af.rpc.<agent>, queue group <agent>

# Durable consumers with a fixed name (the per-lane, per-trigger and per-channel
# ones are named by the functions below).
CONSUMER_RECORDER: Final = "recorder-postgres"  # on AF_EVENTS: finished executions -> PostgreSQL
CONSUMER_RUN_INDEX: Final = "recorder-runs"  # on KV_af_runs: run states -> PostgreSQL's run index
CONSUMER_DLQ_MOVER: Final = "dlq-mover"  # on AF_ADVISORIES: tasks past max_deliver -> AF_DLQ
CONSUMER_SCHEDULE_RELAY: Final = "schedule-relay"  # on AF_SCHEDULES: cron firings -> AF_TASKS
CONSUMER_BILLING_RECORDER: Final = "recorder-billing"  # on AF_BILLING: billing records -> PostgreSQL

STATE_FILE: Final = "state.json"  # in the data dir: where `up` tells the CLI its URLs and token
JS_API_PREFIX: Final = "$JS.API"  # JetStream's API (a domain's is $JS.<domain>.API)

AGENT_KEY_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RUN_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")  # the envelope's id pattern (match, not search)


def task_subject(agent: str, priority: int) -> str:
    return f"{TASKS_PREFIX}.{agent}.{priority}"


def task_consumer(agent: str, priority: int) -> str:
    return f"tasks-{agent}-p{priority}"


FINISHED_PREFIX: Final = f"{EVENTS_PREFIX}.execution.finished"
ALL_FINISHED: Final = f"{FINISHED_PREFIX}.>"


def finished_subject(agent: str, run_id: str) -> str:
    """One subject per run, so the run state can be projected from it server-side
    (``af_runs`` sources these events) and looked up by subject."""
    return f"{FINISHED_PREFIX}.{agent}.{run_id}"


def execution_partition_subject(partition: int | str) -> str:
    """Every finished execution of partition ``partition`` of ``AF_EXECUTIONS``
    (``*``: the wildcard the server's partitioning writes)."""
    return f"{EXECUTIONS_PREFIX}.{partition}.>"


LIFECYCLE_PREFIX: Final = f"{EVENTS_PREFIX}.lifecycle.changed"


def lifecycle_subject(agent: str) -> str:
    """Where ``agent``'s lifecycle transitions are announced (on ``AF_EVENTS``)."""
    return f"{LIFECYCLE_PREFIX}.{agent}"


BREAKER_PREFIX: Final = f"{EVENTS_PREFIX}.breaker.changed"


def breaker_subject(agent: str) -> str:
    """Where ``agent``'s circuit breaker transitions are announced (on ``AF_EVENTS``)."""
    return f"{BREAKER_PREFIX}.{agent}"


def inflight_subject(agent: str) -> str:
    """Where workers answer how many of ``agent``'s tasks they hold (every worker replies)."""
    return f"{INFLIGHT_PREFIX}.{agent}"


def cancel_subject(agent: str) -> str:
    """Where a cancel of one of ``agent``'s runs is announced (the run id is the body)."""
    return f"{CANCEL_PREFIX}.{agent}"


def dlq_subject(origin: str, name: str) -> str:
    """``origin`` is ``tasks`` (name = agent) or ``channels`` (name = channel)."""
    return f"{DLQ_PREFIX}.{origin}.{name}"


def log_subject(process: str) -> str:
    """Where process ``process`` publishes its log records (any character outside
    ``A-Z a-z 0-9 _ -`` of its name becomes ``_``)."""
    return f"{LOGS_PREFIX}.{_NOT_A_TOKEN.sub('_', process) or '_'}"


_NOT_A_TOKEN: Final = re.compile(r"[^A-Za-z0-9_-]")


def schedule_def_subject(name: str) -> str:
    """Where cron ``name``'s server-side schedule is stored (on ``AF_SCHEDULES``)."""
    return f"{SCHEDULES_PREFIX}.def.{name}"


def schedule_fire_subject(name: str) -> str:
    """Where the server publishes cron ``name``'s firings (on ``AF_SCHEDULES``)."""
    return f"{SCHEDULES_PREFIX}.fire.{name}"


def trigger_consumer(name: str) -> str:
    """The durable consumer on ``AF_EVENTS`` of event trigger ``name``."""
    return f"trigger-{name}"


def channel_consumer(channel: str) -> str:
    """The durable consumer (consumer group) on ``AF_CHANNELS`` of durable channel ``channel``
    (its name without the ``durable:`` kind; ``_`` is never in a channel name)."""
    return "ch_" + channel.replace(".", "_")


def rpc_subject(agent: str) -> str:
    """Where core NATS requests to ``agent`` go (queue group ``agent``)."""
    return f"{RPC_PREFIX}.{agent}"


_KV_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _kv_escaped(token: str) -> str:
    """``token`` with each character a KV key cannot hold written ``=XX``, the hex
    of each of its UTF-8 bytes."""

    def escape(m: re.Match[str]) -> str:
        return "".join(f"={b:02X}" for b in m.group().encode())

    return _KV_UNSAFE.sub(escape, token)


def version_key(agent: str, version: str) -> str:
    """``<agent>.<version>``: the KV key of one agent version (``af_breakers``,
    ``af_canary_metrics``). Agent names have no dot, so the first dot separates; a
    version character a KV key cannot hold (``+`` of semver build metadata, …) is
    written ``=XX``, the hex of each of its UTF-8 bytes."""
    return f"{agent}.{_kv_escaped(version)}"


def config_key(agent: str, tenant: str | None = None) -> str:
    """``config.<agent>`` (its base config) or ``config.<agent>.<tenant>`` (a tenant's
    override) in ``af_config``, escaped as :func:`version_key`."""
    key = CONFIG_PREFIX + agent
    return key if tenant is None else f"{key}.{_kv_escaped(tenant)}"


def package_object(name: str, version: str, tenant: str | None, digest: str) -> str:
    """The object of a hub package version in :data:`OBJECTS_PACKAGES`: public ones
    under ``public/``, a tenant's private ones under its name; named by its digest
    too, so a second upload of one version never replaces the first's archive."""
    scope = "public" if tenant is None else f"tenant.{tenant}"
    return f"{scope}/{name}/{version}/{digest[:32]}.glpack"


def kv_stream(bucket: str) -> str:
    """The stream that holds KV bucket ``bucket``."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject of ``key`` in ``bucket``'s stream; ``key`` may be a wildcard
    (``>``), or empty for the prefix every key's subject starts with."""
    return f"$KV.{bucket}.{key}"

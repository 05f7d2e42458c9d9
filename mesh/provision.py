"""Idempotent provisioning of the streams and buckets the platform needs.

Safe to run on every start, by every replica: a missing resource is created,
an existing one is updated to the configured limits, nothing is deleted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError, ServiceUnavailableError

from mesh import names

__all__ = [
    "PLACEMENT_PATIENCE_S",
    "ProvisionConfig",
    "ensure_run_projection",
    "execution_partitions",
    "ensure_stream",
    "placed",
    "provision",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: JetStream's "no suitable peers for placement" (10005): a replicated stream asked
#: for while one of its peers is not known online — right after a cluster starts, or
#: for a moment on a starved host (seen in CI: a stream, a bucket, a Faust topic).
NO_PEERS_FOR_PLACEMENT: Final = 10005
#: How long a create is tried again on that, or on a 503 (a meta leader election).
PLACEMENT_PATIENCE_S: Final = 30.0


async def placed(
    create: Callable[[], Awaitable[T]], what: str, patience_s: float = PLACEMENT_PATIENCE_S
) -> T:
    """``create()`` (a stream, bucket or consumer, or a look at one), asked again
    while the cluster cannot place it yet (10005), has no meta leader (503) or
    does not answer (a timeout), for up to ``patience_s``; then its error.
    Creates are idempotent: the same config asked again is answered with what
    exists."""
    deadline = time.monotonic() + patience_s
    pause = 0.1
    while True:
        try:
            return await create()
        except (BadRequestError, ServiceUnavailableError) as exc:
            transient = isinstance(exc, ServiceUnavailableError) or exc.err_code == NO_PEERS_FOR_PLACEMENT
            if not transient or time.monotonic() + pause > deadline:
                raise
            log.warning("%s not placed yet (%s); asking again in %.1f s", what, exc.description, pause)
        except NatsTimeoutError:  # no answer at all: a meta leader being elected on a starved cluster
            if time.monotonic() + pause > deadline:
                raise
            log.warning("%s: JetStream did not answer; asking again in %.1f s", what, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)


DAY = 86_400.0


DEFAULT_MAX_DEPTH: Final = 100_000  # waiting tasks per agent and priority, enforced by the server
CHANNEL_REGISTRY_TTL_S: Final = 30.0  # a channel subscriber's registry entry lives this long unrenewed


@dataclass(frozen=True, slots=True)
class ProvisionConfig:
    replicas: int = 1
    events_max_age_s: float = 7 * DAY
    dlq_max_age_s: float = 7 * DAY
    idempotency_ttl_s: float = DAY
    runs_ttl_s: float = DAY
    duplicate_window_s: float = 120.0
    max_msg_size: int = 1_048_576
    max_queue_depth: int = DEFAULT_MAX_DEPTH
    # AF_EXECUTIONS: how many partitions (fixed once created: the processors' state
    # is per partition) and how long it keeps what the processors have not read
    execution_partitions: int = 4
    executions_max_age_s: float = DAY
    # AF_LOGS: the fleet's log records, kept for a day or 256 MiB, whichever is less
    logs_max_age_s: float = DAY
    logs_max_bytes: int = 256 * 1024 * 1024


def stream_configs(cfg: ProvisionConfig) -> list[StreamConfig]:

    return [
        StreamConfig(
            name=names.STREAM_TASKS,
            description="Agent task work queue: af.tasks.<agent>.<priority>",
            subjects=[f"{names.TASKS_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_msg_size=cfg.max_msg_size,
            discard=DiscardPolicy.NEW,
            # Depth limit per agent and priority, enforced atomically at publish time.
            max_msgs_per_subject=cfg.max_queue_depth,
            discard_new_per_subject=True,
            allow_msg_ttl=True,
            allow_atomic=True,
        ),
        StreamConfig(
            name=names.STREAM_EVENTS,
            description="Facts: af.events.<kind>.<agent>[.<run id>] (execution finished, cost, lifecycle)",
            subjects=[f"{names.EVENTS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_age=cfg.events_max_age_s,
        ),
        StreamConfig(
            # Server-side cron: schedule messages on af.schedules.def.<name> fire
            # into af.schedules.fire.<name>; the scheduler relays each firing
            # into AF_TASKS exactly once. Separate from AF_TASKS because message
            # schedules cannot be combined with discard-new depth limits.
            name=names.STREAM_SCHEDULES,
            description="Cron schedules (af.schedules.def.<name>) and their firings",
            subjects=[f"{names.SCHEDULES_PREFIX}.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
        ),
        StreamConfig(
            # JetStream only *announces* a task whose worker died on its last
            # attempt (the message stays, skipped); keeping the announcements
            # in a stream means the mover sees every one, even after a restart.
            name=names.STREAM_ADVISORIES,
            description="MAX_DELIVERIES advisories of AF_TASKS, for the dead-letter mover",
            subjects=[names.MAX_DELIVERIES_ADVISORY],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.dlq_max_age_s,
        ),
        executions_stream_config(cfg),
        StreamConfig(
            # One priced record per execution (streams.processors.metering), deduplicated
            # by its id, projected into PostgreSQL for accounting.
            name=names.STREAM_BILLING,
            description="Billing: one priced record per execution, af.billing.<tenant>.<agent>",
            subjects=[f"{names.BILLING_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_age=cfg.events_max_age_s,
        ),
        channel_stream_config(replicas=cfg.replicas, max_msg_size=cfg.max_msg_size),
        StreamConfig(
            # Log records of every process (gateway.telemetry): a bounded window, the
            # oldest discarded first; `agent-factory logs` reads it.
            name=names.STREAM_LOGS,
            description="Log records, JSON: af.logs.<process>",
            subjects=[f"{names.LOGS_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            max_age=cfg.logs_max_age_s,
            max_bytes=cfg.logs_max_bytes,
        ),
        StreamConfig(
            name=names.STREAM_DLQ,
            description="Dead letters: af.dlq.tasks.<agent>, af.dlq.channels.<channel>",
            subjects=[f"{names.DLQ_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=cfg.replicas,
            duplicate_window=cfg.duplicate_window_s,
            max_age=cfg.dlq_max_age_s,
        ),
    ]


def executions_stream_config(cfg: ProvisionConfig) -> StreamConfig:
    """``AF_EXECUTIONS``: every finished execution of ``AF_EVENTS``, copied by the
    server onto ``af.executions.<partition>.<agent>.<run id>``, the partition a hash
    of the agent. One agent's executions are in one partition, in order, so a
    stream processor owning a partition holds all of that agent's state."""
    n = cfg.execution_partitions
    dest = f"{names.EXECUTIONS_PREFIX}.{{{{partition({n},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
    return StreamConfig(
        name=names.STREAM_EXECUTIONS,
        description=f"Finished executions by agent, {n} partitions: "
        "af.executions.<partition>.<agent>.<run id>",
        sources=[
            StreamSource(
                name=names.STREAM_EVENTS,
                subject_transforms=[SubjectTransform(src=f"{names.FINISHED_PREFIX}.*.*", dest=dest)],
            )
        ],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=cfg.replicas,
        max_age=cfg.executions_max_age_s,
    )


_PARTITIONS = re.compile(r"\{\{\s*partition\((\d+)\s*,")


async def execution_partitions(js: JetStreamContext) -> int:
    """How many partitions ``AF_EXECUTIONS`` has (its source transform says)."""
    info = await js.stream_info(names.STREAM_EXECUTIONS)
    for source in info.config.sources or ():
        for transform in source.subject_transforms or ():
            found = _PARTITIONS.search(transform.dest or "")
            if found:
                return int(found.group(1))
    raise ValueError(f"{names.STREAM_EXECUTIONS} has no partitioning transform (provision it)")


def bucket_configs(cfg: ProvisionConfig) -> list[KeyValueConfig]:
    return [
        KeyValueConfig(bucket=names.BUCKET_RUNS, history=1, ttl=cfg.runs_ttl_s,
                       replicas=cfg.replicas, description="run id -> run state"),
        KeyValueConfig(bucket=names.BUCKET_IDEMPOTENCY, history=1, ttl=cfg.idempotency_ttl_s,
                       replicas=cfg.replicas, description="idempotency key -> run id and request digest"),
        # Direct gets: a worker reads its agents' dispatch gates by key, which an
        # agent's own credentials can be allowed to (deployment/nats/accounts.conf).
        KeyValueConfig(bucket=names.BUCKET_CONFIG, history=10, replicas=cfg.replicas, direct=True,
                       description="what the platform obeys live: dispatch.gate.<agent> (mesh.queue.gates), "
                                   "config.<agent>[.<tenant>] (mesh.queue.agent_config)"),
        KeyValueConfig(bucket=names.BUCKET_LOCKS, history=1, replicas=cfg.replicas,
                       description="leases with per-key TTL (mesh.locks)"),
        KeyValueConfig(bucket=names.BUCKET_SCHEDULES, history=5, replicas=cfg.replicas,
                       description="schedule and trigger definitions"),
        channel_bucket_config(replicas=cfg.replicas),
        # Direct gets, as af_config: workers read the breakers of their agents by key.
        KeyValueConfig(bucket=names.BUCKET_BREAKERS, history=1, replicas=cfg.replicas, direct=True,
                       description="fleet-wide circuit breakers per agent (streams.processors.breaker)"),
        KeyValueConfig(bucket=names.BUCKET_BUDGETS, history=5, replicas=cfg.replicas, direct=True,
                       description="budgets and quotas, and which are spent (streams.processors.metering)"),
        # Direct gets: every claim and release of a slot reads its scope's key first.
        KeyValueConfig(bucket=names.BUCKET_SLOTS, history=1, replicas=cfg.replicas, direct=True,
                       description="concurrency quotas: the runs holding each limited scope's slots "
                                   "(mesh.queue.slots)"),
        KeyValueConfig(bucket=names.BUCKET_CANARY_METRICS, history=1, replicas=cfg.replicas,
                       description="per agent version: requests, errors, percentiles "
                                   "(streams.processors.canary)"),
    ]  # fmt: skip


def channel_stream_config(
    replicas: int = 1, max_age_s: float = 7 * 86_400.0, max_msg_size: int = 1_048_576
) -> StreamConfig:
    """``AF_CHANNELS``: a work queue, so a message lives until one subscriber acks it."""
    return StreamConfig(
        name=names.STREAM_CHANNELS,
        description="Durable channels: af.ch.<channel>, one consumer group per channel",
        subjects=[f"{names.DURABLE_CHANNEL_PREFIX}.>"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
        max_age=max_age_s,
        max_msg_size=max_msg_size,
        discard=DiscardPolicy.NEW,
        allow_msg_ttl=True,
    )


def channel_bucket_config(replicas: int = 1) -> KeyValueConfig:
    return KeyValueConfig(
        bucket=names.BUCKET_CHANNELS,
        history=1,
        ttl=CHANNEL_REGISTRY_TTL_S,
        replicas=replicas,
        description="live channel subscribers, renewed by heartbeat",
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig, update: bool = True) -> None:
    """Create ``config.name``, or update it in place to ``config`` (unless not
    ``update``: then an existing stream is left as the operator provisioned it,
    e.g. with 3 replicas)."""
    name = config.name
    assert name is not None
    try:
        await placed(lambda: js.stream_info(name), f"stream {name}")
    except NotFoundError:
        await placed(lambda: js.add_stream(config), f"stream {config.name}")
        log.debug("created stream %s", config.name)
        return
    if not update:
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:  # an immutable field changed: keep the old one, say so
        log.warning("stream %s kept its old config: %s", config.name, exc)


async def provision(js: JetStreamContext, cfg: ProvisionConfig | None = None) -> None:
    cfg = cfg or ProvisionConfig()
    for stream in stream_configs(cfg):
        # AF_EXECUTIONS keeps the partitions it was made with: re-partitioning would
        # split agents' state between the processors' partitions.
        await ensure_stream(js, stream, update=stream.name != names.STREAM_EXECUTIONS)
    for bucket in bucket_configs(cfg):
        try:
            await js.key_value(bucket.bucket)
        except Exception:
            await placed(functools.partial(js.create_key_value, bucket), f"KV bucket {bucket.bucket}")
            log.debug("created KV bucket %s", bucket.bucket)
    await ensure_direct_gets(js, names.BUCKET_CONFIG)
    await ensure_run_projection(js)
    try:
        await js.object_store(names.OBJECTS_PACKAGES)
    except (BucketNotFoundError, NotFoundError):
        store = names.OBJECTS_PACKAGES
        config = ObjectStoreConfig(bucket=store, storage=StorageType.FILE, replicas=cfg.replicas,
                                   description="The hub's package archives (agents.hub)")  # fmt: skip
        await placed(functools.partial(js.create_object_store, store, config), f"object store {store}")
        log.debug("created object store %s", store)


async def ensure_direct_gets(js: JetStreamContext, bucket: str) -> None:
    """Turn on direct gets for ``bucket`` made before they were asked for."""
    info = await js.stream_info(names.kv_stream(bucket))
    if not info.config.allow_direct:
        info.config.allow_direct = True
        await js.update_stream(info.config)
        log.info("%s now answers direct gets", bucket)


RUN_PROJECTION = StreamSource(
    name=names.STREAM_EVENTS,
    subject_transforms=[
        SubjectTransform(
            src=f"{names.FINISHED_PREFIX}.*.*", dest=names.kv_subject(names.BUCKET_RUNS, "{{wildcard(2)}}")
        )
    ],
)


async def ensure_run_projection(js: JetStreamContext) -> None:
    """Make ``af_runs`` source every finished event as its run's final state.

    The server copies ``af.events.execution.finished.<agent>.<run id>`` to
    ``$KV.af_runs.<run id>`` durably (it tracks its position in AF_EVENTS), so
    a worker records an outcome with one publish instead of two.
    """
    info = await js.stream_info(names.kv_stream(names.BUCKET_RUNS))
    config = info.config
    if config.sources and any(source.name == names.STREAM_EVENTS for source in config.sources):
        return
    config.sources = [*(config.sources or []), RUN_PROJECTION]
    await js.update_stream(config)
    log.info("af_runs now projects finished runs from %s", names.STREAM_EVENTS)

"""Enqueue tasks onto the durable priority queue.

Guarantee: :func:`enqueue` returns only after the task is durably stored in
``AF_TASKS`` (PubAck received) or raises; nothing is accepted and then lost.
With an idempotency key, any number of retries by any number of clients
yield one run: the key maps to the original run id for 24 h (KV), and the
task itself is deduplicated by ``Nats-Msg-Id`` = run id.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyWrongLastSequenceError

from mesh import names
from mesh.envelope import (
    CONTENT_TYPE,
    JSON,
    Envelope,
    MessageType,
    Metadata,
    Priority,
    encode,
    new_id,
    utcnow,
)
from mesh.errors import MeshError, QueueFull
from mesh.runs import RunState, RunStatus, get_run, put_run

__all__ = ["DEFAULT_TTL_S", "MAX_TTL_S", "Enqueued", "TaskSpec", "enqueue"]

DEFAULT_TTL_S: Final = 3600
DEFAULT_MAX_DEPTH: Final = 100_000  # per agent and priority, enforced by the server
MAX_TTL_S: Final = 86_400
TASK_TYPE: Final = "task.run"
_SUBJECT_FULL = 10077  # JetStream: maximum messages per subject exceeded


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What a caller asks for. ``tenant`` and ``routing_key`` travel on every task."""

    agent: str
    input: Any
    tenant: str = "default"
    routing_key: str | None = None
    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    ttl_s: int = DEFAULT_TTL_S
    correlation_id: str | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Enqueued:
    run_id: str
    duplicate: bool  # True: this idempotency key was seen before; run_id is the original


def _idempotency_token(tenant: str, key: str) -> str:
    # KV keys have a restricted alphabet; a digest also scopes keys per tenant.
    return hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()


def build_task(spec: TaskSpec, run_id: str) -> Envelope:
    if not names.AGENT_KEY_RE.match(spec.agent):
        raise MeshError(f"invalid agent key {spec.agent!r}")
    ttl = max(1, min(int(spec.ttl_s), MAX_TTL_S))
    return Envelope(
        id=run_id,
        correlation_id=spec.correlation_id or run_id,
        source=spec.source,
        target=spec.agent,
        message_type=MessageType.COMMAND,
        type=TASK_TYPE,
        payload={"agent": spec.agent, "input": spec.input, "idempotency_key": spec.idempotency_key},
        metadata=Metadata(
            tenant=spec.tenant, routing_key=spec.routing_key, priority=spec.priority, ttl_s=ttl
        ),
    )


def task_headers(task: Envelope, content_type: str = JSON) -> dict[str, str]:
    meta = task.metadata
    headers = {
        CONTENT_TYPE: content_type,
        "Nats-Msg-Id": f"run-{task.id}",
        "Nats-TTL": str(int(meta.ttl_s or DEFAULT_TTL_S)),
        "AF-Run-Id": task.id,
        "AF-Tenant": meta.tenant,
    }
    if meta.routing_key is not None:
        headers["AF-Routing-Key"] = meta.routing_key
    return headers


async def enqueue(
    js: JetStreamContext,
    spec: TaskSpec,
    *,
    content_type: str = JSON,
    max_payload: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Enqueued:
    """Durably enqueue one task; see the module docstring for the guarantee."""
    run_id = new_id()
    duplicate = False
    if spec.idempotency_key is not None:
        kv = await js.key_value(names.BUCKET_IDEMPOTENCY)
        token = _idempotency_token(spec.tenant, spec.idempotency_key)
        try:
            await kv.create(token, run_id.encode())
        except KeyWrongLastSequenceError:
            entry = await kv.get(token)
            assert entry.value is not None
            run_id, duplicate = entry.value.decode(), True
            if await get_run(js, run_id) is not None:
                return Enqueued(run_id, True)
            # The first caller recorded the key but died before enqueueing:
            # finish its work under the same run id (dedup makes this safe).
    task = build_task(spec, run_id)
    data = encode(task, content_type, limit=max_payload)
    now = utcnow()
    ttl = int(task.metadata.ttl_s or DEFAULT_TTL_S)
    state = RunState(
        run_id=run_id, agent=spec.agent, tenant=spec.tenant, routing_key=spec.routing_key,
        priority=int(spec.priority), idempotency_key=spec.idempotency_key, enqueued_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )  # fmt: skip
    # The queued record must land before the task: a fast worker's final state
    # must never be overwritten by a late "queued" (the two are different streams).
    await put_run(js, state)
    try:
        await js.publish(
            names.task_subject(spec.agent, int(spec.priority)),
            data,
            headers=task_headers(task, content_type),
        )
    except Exception as exc:
        # Not accepted: say so in the run record too, so nobody waits for it.
        state.status, state.error = RunStatus.FAILED, f"not enqueued: {exc}"
        await _try_put(js, state)
        if isinstance(exc, APIError) and exc.err_code == _SUBJECT_FULL:
            raise QueueFull(spec.agent, int(spec.priority), max_depth) from exc
        raise
    return Enqueued(run_id, duplicate)


async def _try_put(js: JetStreamContext, state: RunState) -> None:
    with contextlib.suppress(Exception):  # the publish error is the one to report
        await put_run(js, state)

"""Enqueue tasks onto the durable priority queue.

Guarantee: :meth:`TaskQueue.enqueue` returns only after the task is durably stored in
``AF_TASKS`` (PubAck received) or raises; nothing is accepted and then lost.
Typical use::

    async with TaskQueue(nc, js) as queue:
        queued = await queue.enqueue(TaskSpec("fuel-combustion", {"fuel": "diesel", ...}))

With an idempotency key, any number of retries by any number of clients
yield one run for the key's whole 24 h: the key maps to the original run id
(KV, create-only), and the task itself carries ``Nats-Msg-Id: run-<run id>``.
(A task without a key gets a fresh run id on every call, so it carries no
``Nats-Msg-Id``: the server keeps no dedup entry for it.) The queued run
record is written only after the task is stored, so its presence proves the
task was accepted. A retry that finds the key but no record (the first
caller died between its writes) looks for the task itself — its outcome
event, or the task in its lane — and republishes only if it is in neither,
so a retry after JetStream's 2-minute duplicate window cannot store it twice.

A publish whose reply never came may or may not have been stored: that is
reported as :class:`~mesh.errors.EnqueueOutcomeUnknown`, never as a
rejection; retrying with the same key (or ``batch_key``) settles it.

Sizes: a task is at most half the NATS max payload (:mod:`mesh.limits`), so
its outcome event and its dead letter always fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Final, NamedTuple

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyWrongLastSequenceError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError, to_json

from mesh import names, trace
from mesh.envelope import (
    JSON,
    SCHEMA_VERSION,
    Envelope,
    MessageType,
    Metadata,
    Priority,
    encode,
    new_id,
    utcnow,
    validation_errors,
)
from mesh.errors import (
    WRONG_LAST_SEQUENCE,
    BatchRejected,
    EnqueueOutcomeUnknown,
    IdempotencyKeyReused,
    InvalidTask,
    PayloadTooLarge,
    QueueFull,
)
from mesh.limits import PayloadLimits
from mesh.queue import metrics
from mesh.queue.agent_config import ConfigWatch
from mesh.queue.budgets import SpendGuard
from mesh.queue.outcome import stored_outcome
from mesh.queue.runs import RunStatus, get_run, run_key
from mesh.queue.spans import RUN_ID, enqueue_span
from mesh.wire import protocol
from mesh.wire.protocol import encode_headers
from mesh.wire.publisher import ELECTION_PATIENCE_S, Patience, Pipeline, PubAck, parse_puback

__all__ = [
    "CALL_DEPTH_HEADER",
    "DEFAULT_TTL_S",
    "MAX_BATCH",
    "MAX_TTL_S",
    "Enqueued",
    "TaskQueue",
    "TaskSpec",
]

log = logging.getLogger(__name__)

DEFAULT_TTL_S: Final = 3600
MAX_TTL_S: Final = 86_400
TASK_TYPE: Final = "task.run"
MAX_BATCH: Final = 1000  # JetStream's atomic batch limit
#: How many agent calls deep a task is (absent: 0, a run nobody's run asked for; agents.calls).
CALL_DEPTH_HEADER: Final = "AF-Call-Depth"
_SUBJECT_FULL = 10077  # JetStream: maximum messages per subject exceeded
_CREATE_ONLY = protocol.expect_last_subject_seq(protocol.EMPTY_HEADERS, 0)
_COMMAND = MessageType.COMMAND.value
_QUEUED = RunStatus.QUEUED.value
# No answer, or JetStream not ready (a node rejoining its cluster answers 503 10008
# for a moment): what an enqueue step wrote, if anything, is unknown to the caller.
_UNANSWERED = (TimeoutError, ServiceUnavailableError)


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
    call_depth: int = 0  # runs of agents calling agents above this one (agents.calls)


@dataclass(frozen=True, slots=True)
class Enqueued:
    run_id: str
    duplicate: bool  # True: this idempotency key was seen before; run_id is the original
    status: str = _QUEUED  # of a duplicate: the run's status now (queued, running, succeeded, ...)


def _idempotency_token(tenant: str, key: str) -> str:
    # KV keys have a restricted alphabet; a digest also scopes keys per tenant.
    return hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()


def request_digest(specs: Sequence[TaskSpec]) -> str:
    """What an idempotency key promises stays the same: the agents and inputs
    (key order in an input does not matter). Stored with the key's claim, so a
    key reused for another request is refused (:class:`IdempotencyKeyReused`)."""
    canonical = json.dumps(
        [[spec.agent, spec.input] for spec in specs], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _claimed(value: bytes, key: str, digest: str) -> str:
    """The run id a key's claim names (``<run id> <digest>``), if the request matches."""
    run_id, _, claimed_digest = value.decode().partition(" ")
    if claimed_digest and claimed_digest != digest:  # claims written before digests had none
        raise IdempotencyKeyReused(key, run_id)
    return run_id


def _check_agent(agent: str) -> None:
    if not names.AGENT_KEY_RE.match(agent):
        raise InvalidTask(f"invalid agent key {agent!r}: lowercase letters, digits and '-'")


def build_task(spec: TaskSpec, run_id: str, created_at: datetime | None = None) -> Envelope:
    """The task's envelope, validated by the model (what a worker will decode)."""
    _check_agent(spec.agent)
    try:
        return Envelope(
            id=run_id,
            correlation_id=spec.correlation_id or run_id,
            source=spec.source,
            target=spec.agent,
            message_type=MessageType.COMMAND,
            type=TASK_TYPE,
            payload=_payload(spec),
            metadata=_metadata(spec.tenant, spec.routing_key, spec.priority, _ttl(spec)),
            created_at=created_at or utcnow(),
        )
    except ValidationError as exc:
        raise InvalidTask(f"invalid task: {validation_errors(exc)}") from exc


class TaskMessage(NamedTuple):
    """A task ready to publish: its bytes, headers and queued run record."""

    run_id: str
    data: bytes
    headers: bytes
    record: bytes


def task_message(
    spec: TaskSpec,
    run_id: str,
    content_type: str = JSON,
    *,
    limit: int | None = None,
    dedup: bool = False,
    extra_headers: Mapping[str, str] | None = None,
) -> TaskMessage:
    """Validate ``spec`` and serialize its task (see :func:`build_task`).

    Hot path (once per enqueue). For JSON the envelope is serialized straight
    from its parts: the fields the model would check are checked here (the
    metadata through the model, cached per distinct tenant, key, priority and
    TTL), so the model is not built and re-validated per task;
    ``tests/unit/mesh/queue/test_task_message.py`` holds the two paths together.
    """
    created_at = utcnow()
    if content_type != JSON:
        task = build_task(spec, run_id, created_at)
        data, meta = encode(task, content_type, limit=limit), task.metadata
    else:
        _check_agent(spec.agent)
        if not names.RUN_ID_RE.match(run_id):
            raise InvalidTask(f"invalid run id {run_id!r}")
        if spec.correlation_id is not None and len(spec.correlation_id) > 128:
            raise InvalidTask("invalid task: correlation_id: at most 128 characters")
        if spec.source is not None and len(spec.source) > 256:
            raise InvalidTask("invalid task: source: at most 256 characters")
        try:
            meta = _metadata(spec.tenant, spec.routing_key, spec.priority, _ttl(spec))
        except ValidationError as exc:
            raise InvalidTask(f"invalid task: {validation_errors(exc)}") from exc
        envelope = {
            "schema_version": SCHEMA_VERSION, "id": run_id,
            "correlation_id": spec.correlation_id or run_id, "source": spec.source,
            "target": spec.agent, "message_type": _COMMAND, "type": TASK_TYPE,
            "payload": _payload(spec), "metadata": meta, "created_at": created_at,
        }  # fmt: skip
        try:
            data = to_json(envelope, inf_nan_mode="null")  # NaN/inf as the model writes them: null
        except PydanticSerializationError as exc:
            raise InvalidTask(f"task input is not serializable: {exc}") from exc
        if limit is not None and len(data) > limit:
            raise PayloadTooLarge(len(data), limit, what="task")
    headers = b"NATS/1.0\r\nContent-Type: %s\r\n" % content_type.encode()
    if dedup:
        headers += b"Nats-Msg-Id: run-%s\r\n" % run_id.encode()
    headers += _meta_headers(meta)
    if spec.call_depth:
        headers += b"%s: %d\r\n" % (CALL_DEPTH_HEADER.encode(), spec.call_depth)
    if extra_headers:
        headers += encode_headers(extra_headers)[10:-2]  # without its status line and end
    return TaskMessage(run_id, data, headers + b"\r\n", queued_record(run_id, spec, created_at, meta))


def queued_record(run_id: str, spec: TaskSpec, created_at: datetime, meta: Metadata) -> bytes:
    """The queued run record (a :class:`RunState` as JSON, defaults left out),
    without the task's stream sequence: :func:`with_seq` adds it once stored."""
    ttl = int(meta.ttl_s or DEFAULT_TTL_S)
    record: dict[str, Any] = {
        "run_id": run_id, "agent": spec.agent, "tenant": meta.tenant,
        "priority": int(meta.priority), "status": _QUEUED,
        "enqueued_at": created_at, "expires_at": created_at + timedelta(seconds=ttl),
    }  # fmt: skip
    if meta.routing_key is not None:
        record["routing_key"] = meta.routing_key
    if spec.idempotency_key is not None:
        record["idempotency_key"] = spec.idempotency_key
    return to_json(record)


def with_seq(record: bytes, seq: int) -> bytes:
    """``record`` (a JSON object) with the task's AF_TASKS sequence added."""
    return b'%s,"seq":%d}' % (record[:-1], seq)


def _ttl(spec: TaskSpec) -> int:
    return max(1, min(int(spec.ttl_s), MAX_TTL_S))


def _payload(spec: TaskSpec) -> dict[str, Any]:
    return {"agent": spec.agent, "input": spec.input, "idempotency_key": spec.idempotency_key}


@lru_cache(maxsize=4096)
def _metadata(tenant: str, routing_key: str | None, priority: int, ttl: int) -> Metadata:
    """Validated once per distinct combination (raises ``ValidationError``)."""
    return Metadata(tenant=tenant, routing_key=routing_key, priority=priority, ttl_s=ttl)


@lru_cache(maxsize=4096)
def _meta_headers(meta: Metadata) -> bytes:
    # No Nats-TTL: the server would remove the task at its TTL even while a
    # worker runs it. The TTL bounds the wait for a first start; the worker
    # (at that start) and the reaper (while it waits) enforce it.
    fields = {"AF-Tenant": meta.tenant}
    if meta.routing_key is not None:
        fields["AF-Routing-Key"] = meta.routing_key  # CR/LF become spaces, as in encode_headers
    return encode_headers(fields)[10:-2]


_CLOCK_MARGIN_S: Final = 20.0  # skew allowed between this host's clock and the server's


class _Claim(NamedTuple):
    """An idempotency key's earlier claim: its value and when the server stored it."""

    value: bytes
    at: datetime


class TaskQueue:
    """The producer side of the queue. Owns a :class:`Pipeline` (``start``/``stop``)."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        max_payload: int | None = None,
        patience_s: float = ELECTION_PATIENCE_S,
        obey_budgets: bool = True,
        obey_config: bool = True,
    ) -> None:
        """``max_payload``: the NATS max payload (default: the server's); a task
        may be half of it (:mod:`mesh.limits`). ``patience_s``: how long a write
        JetStream answers 503 (a stream electing a leader: nothing stored) is
        tried again before :class:`~mesh.errors.StreamUnavailable`. ``obey_budgets``:
        refuse work of spent budgets and quotas (:mod:`mesh.queue.budgets`). ``obey_config``:
        refuse work of agents whose kill switch is on (:mod:`mesh.queue.agent_config`)."""
        self.nc, self.js = nc, js
        self.patience_s = patience_s
        known = [v for v in (max_payload, nc.max_payload) if v]
        self.max_task_bytes = PayloadLimits.of(min(known) if known else None).task
        self.max_depth = 0  # waiting tasks per lane: the server's limit, read by start()
        self.pipeline = Pipeline(nc)
        self._idempotency: KeyValue | None = None
        self._dedup_window_s = 0.0
        self.guard = SpendGuard(nc, js) if obey_budgets else None
        self.config = ConfigWatch(nc, js, name="producer") if obey_config else None

    async def start(self) -> None:
        await self.pipeline.start()
        if self.config is not None:
            await self.config.start()
        if self.guard is not None:
            try:
                await self.guard.start()
            except (BucketNotFoundError, NotFoundError):  # provisioned before budgets existed
                log.warning("no %s bucket (run provision): budgets and quotas are not enforced",
                            names.BUCKET_BUDGETS)  # fmt: skip
                await self.guard.stop()
                self.guard = None
        self._idempotency = await self.js.key_value(names.BUCKET_IDEMPOTENCY)
        info = await self.js.stream_info(names.STREAM_TASKS)
        self._dedup_window_s = float(info.config.duplicate_window or 0)
        self.max_depth = info.config.max_msgs_per_subject or 0

    async def stop(self) -> None:
        if self.guard is not None:
            await self.guard.stop()
        if self.config is not None:
            await self.config.stop()
        await self.pipeline.stop()

    async def __aenter__(self) -> TaskQueue:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def enqueue(self, spec: TaskSpec, *, content_type: str = JSON) -> Enqueued:
        """Durably enqueue one task; see the module docstring for the guarantee."""
        try:
            if not trace.recording():
                return await self._enqueue(spec, content_type)
            if not trace.wants_span():  # not sampled: no span, the trace id passed on all the same
                return await self._enqueue(
                    spec, content_type, {trace.TRACEPARENT: trace.outgoing(None, "00")[0]}
                )
            with enqueue_span(spec.agent, spec.tenant, int(spec.priority)) as span:
                enqueued = await self._enqueue(spec, content_type, {trace.TRACEPARENT: trace.outgoing()[0]})
                span.set_attribute(RUN_ID, enqueued.run_id)
                return enqueued
        except _UNANSWERED as exc:  # a key claim, lookup or queued record (the task's own: _refusal)
            raise EnqueueOutcomeUnknown(
                f"NATS did not answer while enqueueing a task of {spec.agent} ({exc!r}): it may or "
                "may not be stored; retrying with the same idempotency key settles it"
            ) from exc

    async def _enqueue(
        self, spec: TaskSpec, content_type: str, traced: Mapping[str, str] | None = None
    ) -> Enqueued:
        if self.config is not None:
            self.config.check(spec.agent, spec.tenant)
        if self.guard is not None:
            self.guard.check(spec.agent, spec.tenant)
        run_id = new_id()
        duplicate, claim = False, None
        if spec.idempotency_key is not None:
            digest = request_digest([spec])
            claim = await self._claim_key(spec.tenant, spec.idempotency_key, f"{run_id} {digest}".encode())
            if claim is not None:
                found = _claimed(claim.value, spec.idempotency_key, digest)
                if (current := await get_run(self.js, found)) is not None:
                    return Enqueued(found, True, current.status.value)
                # The first caller recorded the key but may have died before its
                # task was stored, or after it but before the queued record.
                run_id, duplicate = found, True
        message = task_message(
            spec, run_id, content_type, limit=self.max_task_bytes, dedup=spec.idempotency_key is not None,
            extra_headers=traced,
        )  # fmt: skip
        if claim is not None and await self._stored_past_window(claim, run_id, spec):
            await self._create_record(run_id, message.record)  # the marker it lacked
            return Enqueued(run_id, True)
        # The task first, then its queued record: the record is the commit
        # marker a retry with the same idempotency key trusts ("the task is
        # stored"). It is create-only, so a fast worker's state can never be
        # overwritten by it.
        subject = names.task_subject(spec.agent, int(spec.priority))
        ack, patience = None, None
        while ack is None:
            try:
                reply = await self.pipeline.request(subject, message.data, message.headers)
                ack = parse_puback(await reply)
            except NoStreamResponseError:  # nothing stored: the stream is electing a leader
                patience = patience or Patience(self.patience_s)
                await patience.pause(f"the task queue of {spec.agent}")
            except Exception as exc:
                raise self._refusal(spec, message.run_id, exc) from exc
        await self._create_record(run_id, with_seq(message.record, ack.seq))
        metrics.enqueued(spec.agent, spec.tenant, int(spec.priority)).inc()
        return Enqueued(run_id, duplicate)

    def _refusal(self, spec: TaskSpec, run_id: str, exc: Exception) -> Exception:
        """What a failed task publish means for the caller."""
        if isinstance(exc, APIError) and exc.err_code == _SUBJECT_FULL:
            return QueueFull(spec.agent, int(spec.priority), self.max_depth)
        if isinstance(exc, TimeoutError | ConnectionError):
            return EnqueueOutcomeUnknown(
                f"NATS did not confirm task {run_id} ({exc}): it may or may not be stored"
            )
        return exc

    async def _create_record(self, run_id: str, record: bytes) -> None:
        patience = None
        while True:
            reply = await self.pipeline.request(run_key(run_id), record, _CREATE_ONLY)
            try:
                parse_puback(await reply)
            except NoStreamResponseError:  # nothing stored: the bucket is electing a leader
                patience = patience or Patience(self.patience_s)
                await patience.pause(f"run record {run_id}")
                continue
            except APIError as exc:
                if exc.err_code not in WRONG_LAST_SEQUENCE:  # already written by the worker: fine
                    raise
            return

    async def _claim_key(self, tenant: str, key: str, value: bytes) -> _Claim | None:
        """Record key -> ``value`` (create-only); the earlier claim if the key was taken."""
        assert self._idempotency is not None
        token = _idempotency_token(tenant, key)
        patience = None
        while True:
            try:
                await self._idempotency.create(token, value)
                return None
            except NoStreamResponseError:  # nothing stored: the bucket is electing a leader
                patience = patience or Patience(self.patience_s)
                await patience.pause(f"idempotency key {key!r}")
            except KeyWrongLastSequenceError:
                break
        raw = await self.js.get_last_msg(
            names.kv_stream(names.BUCKET_IDEMPOTENCY), names.kv_subject(names.BUCKET_IDEMPOTENCY, token)
        )
        assert raw.data is not None and raw.time is not None
        return _Claim(raw.data, raw.time)

    async def _stored_past_window(self, claim: _Claim, run_id: str, spec: TaskSpec) -> bool:
        """Was the task of a claim that left no queued record stored? Inside the
        duplicate window (less a margin for clock skew) the republish is
        deduplicated by its ``Nats-Msg-Id``, so no lookup is needed; past it, look."""
        if utcnow() - claim.at < timedelta(seconds=self._dedup_window_s - _CLOCK_MARGIN_S):
            return False
        return await task_stored(self.js, run_id, spec.agent, int(spec.priority))

    async def enqueue_batch(
        self,
        specs: Sequence[TaskSpec],
        *,
        batch_key: str | None = None,
        content_type: str = JSON,
    ) -> list[Enqueued]:
        """Enqueue up to 1,000 tasks atomically: all are stored, or none is.

        Uses JetStream atomic batch publish on ``AF_TASKS``. ``batch_key``
        makes a retried batch idempotent for 24 h (the same run ids come
        back); per-task idempotency keys are not accepted in a batch.
        """
        if not 1 <= len(specs) <= MAX_BATCH:
            raise BatchRejected(f"a batch holds 1 to {MAX_BATCH} tasks, not {len(specs)}")
        if any(spec.idempotency_key for spec in specs):
            raise BatchRejected("tasks in a batch cannot carry idempotency keys; use batch_key")
        for spec in specs:  # all or nothing, as the batch
            if self.config is not None:
                self.config.check(spec.agent, spec.tenant)
            if self.guard is not None:
                self.guard.check(spec.agent, spec.tenant)
        if not trace.recording():
            return await self._enqueue_batch(specs, batch_key, content_type, {})
        if not trace.wants_span():
            unsampled = {trace.TRACEPARENT: trace.outgoing(None, "00")[0]}
            return await self._enqueue_batch(specs, batch_key, content_type, unsampled)
        with enqueue_span(specs[0].agent, specs[0].tenant, int(specs[0].priority)) as span:
            span.set_attribute("af.batch_size", len(specs))
            return await self._enqueue_batch(
                specs, batch_key, content_type, {trace.TRACEPARENT: trace.outgoing()[0]}
            )

    async def _enqueue_batch(
        self, specs: Sequence[TaskSpec], batch_key: str | None, content_type: str, traced: Mapping[str, str]
    ) -> list[Enqueued]:
        run_ids = [new_id() for _ in specs]
        if batch_key is not None:
            run_ids, done = await self._claim_batch(specs, batch_key, run_ids, content_type)
            if done is not None:
                return done
        last, ack, patience = len(specs), None, None
        while ack is None:
            batch_id = new_id()
            messages = [
                task_message(
                    spec, run_id, content_type, limit=self.max_task_bytes, dedup=batch_key is not None,
                    extra_headers={**traced, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i),
                                   **({"Nats-Batch-Commit": "1"} if i == last else {})},
                )
                for i, (spec, run_id) in enumerate(zip(specs, run_ids, strict=True), start=1)
            ]  # fmt: skip
            try:
                ack = await self._publish_batch(specs, messages, batch_id, batch_key)
            except NoStreamResponseError:  # not committed: the stream is electing a leader
                patience = patience or Patience(self.patience_s)
                await patience.pause("the task queue (a batch)")
        # Committed: now the queued records (the first one is the commit marker
        # a retried batch_key trusts, so it goes last). An atomic batch is
        # stored in consecutive sequences ending at the commit's.
        first_seq = ack.seq - len(messages) + 1
        records = [with_seq(m.record, first_seq + i) for i, m in enumerate(messages)]
        await asyncio.gather(
            *(self._create_record(m.run_id, r) for m, r in zip(messages[1:], records[1:], strict=True))
        )
        await self._create_record(messages[0].run_id, records[0])
        for spec in specs:
            metrics.enqueued(spec.agent, spec.tenant, int(spec.priority)).inc()
        return [Enqueued(run_id, False) for run_id in run_ids]

    async def _claim_batch(
        self, specs: Sequence[TaskSpec], batch_key: str, run_ids: list[str], content_type: str
    ) -> tuple[list[str], list[Enqueued] | None]:
        """Claim ``batch_key`` for ``run_ids``: returns the run ids the batch has
        (an earlier attempt's, if it claimed the key first) and, when that
        attempt's batch is already stored, what to return instead of enqueuing."""
        digest = request_digest(specs)
        value = json.dumps({"runs": run_ids, "digest": digest}).encode()
        claim = await self._claim_key(specs[0].tenant, f"batch\x00{batch_key}", value)
        if claim is None:
            return run_ids, None
        stored = json.loads(claim.value)  # a list: a claim from before digests
        claimed = list(stored["runs"] if isinstance(stored, dict) else stored)
        other = isinstance(stored, dict) and stored.get("digest") != digest
        if len(claimed) != len(specs) or other:
            raise IdempotencyKeyReused(batch_key, claimed[0])
        if await get_run(self.js, claimed[0]) is not None:
            states = await asyncio.gather(*(get_run(self.js, run_id) for run_id in claimed))
            return claimed, [
                Enqueued(run_id, True, state.status.value if state else _QUEUED)
                for run_id, state in zip(claimed, states, strict=True)
            ]
        # The first attempt died before its first record (the commit
        # marker): was its batch stored? (all of it or none: atomic)
        if await self._stored_past_window(claim, claimed[0], specs[0]):
            for spec, run_id in zip(specs, claimed, strict=True):
                message = task_message(spec, run_id, content_type, limit=self.max_task_bytes)
                await self._create_record(run_id, message.record)
            return claimed, [Enqueued(run_id, True) for run_id in claimed]
        return claimed, None

    async def _publish_batch(
        self, specs: Sequence[TaskSpec], messages: list[TaskMessage], batch_id: str, batch_key: str | None
    ) -> PubAck:
        """Publish an atomic batch; the commit's PubAck, or the error that says
        nothing was stored, or :class:`EnqueueOutcomeUnknown`."""
        last = len(messages)
        first_reply = None
        commit = None
        for i, (spec, message) in enumerate(zip(specs, messages, strict=True), start=1):
            subject = names.task_subject(spec.agent, int(spec.priority))
            if i == last:
                commit = await self.pipeline.request(subject, message.data, message.headers)
            elif i == 1:
                first_reply = await self.pipeline.request(subject, message.data, message.headers)
            else:
                await protocol.publish(self.nc, subject, message.data, headers=message.headers)
        assert commit is not None
        try:
            if first_reply is not None:
                reply = await first_reply
                if reply.data or reply.raw_headers:  # success is an empty reply; anything else is an error
                    try:
                        parse_puback(reply)
                    finally:  # the commit is refused then (the batch lacks a message): wait for it
                        with contextlib.suppress(Exception):
                            await commit
            return parse_puback(await commit)
        except APIError as exc:  # the server said no: nothing of the batch is stored
            if exc.err_code == _SUBJECT_FULL:
                raise QueueFull(specs[0].agent, int(specs[0].priority), self.max_depth) from exc
            raise BatchRejected(f"batch rejected by JetStream, nothing was enqueued: {exc}") from exc
        except (TimeoutError, ConnectionError) as exc:  # no answer: it may have been committed
            again = "retry with the same batch_key to find out" if batch_key else "give it a batch_key"
            raise EnqueueOutcomeUnknown(
                f"NATS did not confirm batch {batch_id} ({exc}): it may or may not be stored; {again}"
            ) from exc


async def task_stored(js: JetStreamContext, run_id: str, agent: str, priority: int) -> bool:
    """Was run ``run_id``'s task stored? Its outcome event exists, or it is in its
    lane (waiting or in flight). The cold path of a retry whose first attempt
    left no queued record: one lookup, then a scan of the lane (one request
    per task waiting there) for its ``Nats-Msg-Id``."""
    if await stored_outcome(js, agent, run_id) is not None:
        return True
    marker, subject, seq = f"run-{run_id}", names.task_subject(agent, priority), 0
    while True:
        try:
            raw = await js.get_msg(names.STREAM_TASKS, seq=seq + 1, subject=subject, next=True)
        except NotFoundError:
            break
        if (raw.headers or {}).get("Nats-Msg-Id") == marker:
            return True
        assert raw.seq is not None
        seq = raw.seq
    # Acked while we scanned? Its event was stored before its ack.
    return await stored_outcome(js, agent, run_id) is not None

"""An agent calls another through the task queue: ``await ctx.call("b", {"x": 1})``.

A call is an ordinary run of the callee, enqueued with :class:`~mesh.queue.TaskQueue`
(so its quotas, budgets and kill switch apply) as a child of the calling run:
its tenant, its correlation id, its priority (unless the call names one), and
the current trace context, so the callee's spans are children of the caller's
attempt. The caller then waits for the callee's recorded outcome
(:func:`mesh.queue.results.await_outcome`).

Guarantee: **one run of the callee per call, however often the caller runs.**
The n-th call of a run carries the idempotency key ``af-call:<run id>:<n>``
(or ``af-call:<run id>:<key>`` with an explicit key), so an attempt retried or
redelivered after its worker died finds the run its earlier attempt enqueued,
and waits for that run (its outcome may be recorded already) instead of
enqueueing a second. The producer's idempotency (docs/queue.md) makes that
hold for the key's 24 h. Calls are refused before anything is enqueued for
an agent this worker's registry does not know, an input its model refuses,
and past :data:`MAX_CALL_DEPTH` nested calls (an agent calling itself forever).

A sandboxed run's calls come to its worker's call site over its call socket
(:mod:`agents.sandbox.relay`) and are made here the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from agents.errors import (
    AgentCallError,
    AgentCallFailed,
    AgentCallRefused,
    AgentCallTimedOut,
    CallDepthExceeded,
)
from agents.registry import Registry
from mesh.envelope import Priority
from mesh.queue.producer import Enqueued, TaskQueue, TaskSpec
from mesh.queue.results import await_outcome
from mesh.queue.runs import ExecutionFinished, RunStatus
from mesh.queue.worker import TaskContext, has_lane

__all__ = [
    "MAX_CALL_DEPTH",
    "AgentCallError",
    "AgentCallFailed",
    "AgentCallRefused",
    "AgentCallTimedOut",
    "CallDepthExceeded",
    "CallSite",
    "Caller",
    "failure_category",
]

#: Runs nested below a run nobody's run asked for (which is depth 0): past it, calls are refused.
MAX_CALL_DEPTH: Final = 8


def failure_category(outcome: ExecutionFinished) -> str:
    """In a word, why a run ended without a result: the sandbox's category when it
    measured one, ``expired``/``cancelled``, ``permanent`` (its last error was not
    retryable) or ``error`` (it ran out of attempts)."""
    measured = (outcome.audit or {}).get("error")
    if isinstance(measured, str):
        return measured
    if outcome.status in (RunStatus.EXPIRED, RunStatus.CANCELLED):
        return outcome.status.value
    if outcome.errors and not outcome.errors[-1].retryable:
        return "permanent"
    return "error"


class Caller:
    """The calls of one worker's runs: a task queue of its own (started and stopped
    with the worker: :meth:`TaskWorker.attach`) and the registry that says which
    agents exist."""

    def __init__(self, nc: Client, js: JetStreamContext, registry: Registry) -> None:
        self.nc, self.js, self.registry = nc, js, registry
        self._queue: TaskQueue | None = None
        self._starting = asyncio.Lock()
        self._lanes: set[tuple[str, int]] = set()  # callees this worker does not know, found served

    async def start(self) -> None:
        """Nothing yet: the queue starts at the first call (most workers' agents make none)."""

    async def stop(self) -> None:
        queue, self._queue = self._queue, None
        if queue is not None:
            await queue.stop()

    async def has_lane(self, agent: str, priority: int) -> bool:
        """Is ``agent`` served somewhere (at ``priority``), though this worker does not know it
        (an installed package's agent)? Remembered once true."""
        if (agent, priority) in self._lanes:
            return True
        if not await has_lane(self.js, agent, priority):
            return False
        self._lanes.add((agent, priority))
        return True

    async def queue(self) -> TaskQueue:
        async with self._starting:
            if self._queue is None:
                queue = TaskQueue(self.nc, self.js)
                await queue.start()
                self._queue = queue
            return self._queue

    def site(self, task: TaskContext) -> CallSite:
        """Where the calls of ``task``'s run go (one per attempt: it counts them)."""
        return CallSite(self, task)


class CallSite:
    """The calls one attempt of a run makes, numbered in order."""

    def __init__(self, caller: Caller, task: TaskContext) -> None:
        self.caller, self.task = caller, task
        self.made = 0

    async def spec(self, agent: str, input: Mapping[str, Any] | BaseModel, key: str | None,
                   priority: int | None) -> TaskSpec:  # fmt: skip
        """The callee's task (raises :class:`AgentCallRefused`: nothing is enqueued). Numbered
        before its first wait: calls made at once are numbered in the order they were made."""
        self.made += 1
        made = self.made
        depth = self.task.call_depth + 1
        if depth > MAX_CALL_DEPTH:
            raise CallDepthExceeded(agent, depth, MAX_CALL_DEPTH)
        meta = self.task.envelope.metadata
        level = Priority(priority if priority is not None else meta.priority)
        data = input.model_dump(mode="json") if isinstance(input, BaseModel) else dict(input)
        if agent in self.caller.registry:  # known here: its input is checked before it is enqueued
            try:
                self.caller.registry.get(agent).Input.model_validate(data)
            except ValidationError as exc:
                raise AgentCallRefused(f"input for {agent} does not fit its model: {exc}", agent) from exc
        elif not await self.caller.has_lane(agent, level):
            raise AgentCallRefused(f"no agent named {agent!r} (not known to this worker, and no worker "
                                   f"has served it at priority {int(level)})", agent)  # fmt: skip
        return TaskSpec(
            agent=agent, input=data, tenant=self.task.tenant, routing_key=meta.routing_key, priority=level,
            idempotency_key=f"af-call:{self.task.run_id}:{made if key is None else 'key:' + key}",
            correlation_id=self.task.correlation_id, source=f"agent:{self.task.agent}", call_depth=depth,
        )  # fmt: skip

    async def enqueue(self, agent: str, input: Mapping[str, Any] | BaseModel, key: str | None,
                      priority: int | None) -> Enqueued:  # fmt: skip
        spec = await self.spec(agent, input, key, priority)
        return await (await self.caller.queue()).enqueue(spec)

    async def submit(self, agent: str, input: Mapping[str, Any] | BaseModel, *, key: str | None = None,
                     priority: int | None = None) -> str:  # fmt: skip
        return (await self.enqueue(agent, input, key, priority)).run_id

    async def call(self, agent: str, input: Mapping[str, Any] | BaseModel, *, timeout_s: float = 60.0,
                   key: str | None = None, priority: int | None = None) -> dict[str, Any]:  # fmt: skip
        run_id = (await self.enqueue(agent, input, key, priority)).run_id
        try:
            outcome = await await_outcome(self.caller.nc, self.caller.js, agent, run_id, timeout_s)
        except TimeoutError as exc:
            raise AgentCallTimedOut(agent, run_id, timeout_s) from exc
        if outcome.status is not RunStatus.SUCCEEDED:
            error = outcome.error or (outcome.errors[-1].error if outcome.errors else None)
            raise AgentCallFailed(agent, run_id, outcome.status.value, failure_category(outcome), error)
        # An agent's result is its Output model dumped: an object (a plain handler's may be anything).
        result = outcome.result
        return result if isinstance(result, dict) else {"result": result}

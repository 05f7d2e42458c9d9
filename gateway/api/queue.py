"""Queue operations: stats, dead letters, batch submit (``/api/v1/queue``).

Replaying one dead letter (``seq``) answers at once; replaying an agent's or all
(``agent``, ``all``) is an operation of kind ``dlq.replay`` (``202``,
:mod:`gateway.api.operations`) whose progress counts the letters. It is
resumed after its gateway died: what is left in the DLQ of the letters dead
when it was asked is replayed, and a letter republished but not yet deleted is
stored once (its ``Nats-Msg-Id``).
"""

from __future__ import annotations

import contextlib
import json
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from agents.errors import AgentInputInvalid
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.middleware import correlation_id
from gateway.api.models import RunRequest
from gateway.api.operations import OperationView, accept
from gateway.api.params import DLQ_SEQ, MAX_SEQ, ecma_pattern, path_value, query_int, query_value
from gateway.api.problems import validation_errors
from gateway.api.runs import run_tenant
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from gateway.operations import OperationContext, OperationKind
from mesh.deadletters import DeadLetter
from mesh.envelope import named_run_id
from mesh.names import AGENT_KEY_RE
from mesh.queue import dlq
from mesh.queue.producer import MAX_BATCH, TaskSpec
from mesh.queue.stats import LaneStats, queue_stats

__all__ = ["DlqSelection", "dlq_kinds", "routes"]

routes = web.RouteTableDef()


class LaneView(LaneStats):
    @computed_field  # type: ignore[prop-decorator]
    @property
    def stalled(self) -> bool:
        """As many in flight as it may have: its next task waits for one to finish."""
        return super().stalled


class QueueStatsView(BaseModel):
    lanes: list[LaneView]
    dead_letters: dict[str, int] = Field(description="dead letters per agent")


class DeadLetterSummary(BaseModel):
    seq: int
    run_id: str | None
    agent: str
    tenant: str
    reason: str
    attempts: int
    last_error: str | None
    dead_at: datetime


class DeadLetterList(BaseModel):
    dead_letters: list[DeadLetterSummary]


class DeadLetterDetail(DeadLetter):
    seq: int
    decoded: Any = Field(default=None, alias="payload", description="the payload, when it is JSON")


class DlqQuery(BaseModel):
    agent: str | None = Field(default=None, pattern=ecma_pattern(AGENT_KEY_RE.pattern))
    limit: int = Field(default=100, ge=0, le=1000)
    after: int = Field(default=0, ge=0, le=MAX_SEQ, description="the last seq of the page before")


class Purged(BaseModel):
    purged: int


@routes.get("/api/v1/queue/stats")
@endpoint("Every lane's depth and dead letters per agent", response=QueueStatsView, tags=("queue",))
async def stats(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    result = await queue_stats(svc.js)
    lanes = [{**lane.model_dump(), "stalled": lane.stalled} for lane in result.lanes]
    return json_response({"lanes": lanes, "dead_letters": result.dead_letters})


def _run_id(entry: DeadLetter) -> str | None:
    """The run of a task dead letter: recorded with it or, for a task that was
    dead-lettered unread before runs were named, the one its bytes name."""
    if entry.run_id is not None or entry.origin != "tasks":
        return entry.run_id
    return named_run_id(entry.payload, entry.headers)


def _summary(view: dlq.DeadLetterView) -> dict[str, Any]:
    e = view.entry
    return {
        "seq": view.seq, "run_id": _run_id(e), "agent": e.name, "tenant": e.tenant,
        "reason": e.reason, "attempts": len(e.errors),
        "last_error": e.errors[-1].error if e.errors else None, "dead_at": e.dead_at.isoformat(),
    }  # fmt: skip


@routes.get("/api/v1/queue/dlq")
@endpoint(
    "Dead letters of tasks, oldest first", query=DlqQuery, response=DeadLetterList, tags=("dead letters",)
)
async def list_dlq(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = query_value(request, "agent", AGENT_KEY_RE, "agent key")
    limit = query_int(request, "limit", 100, 1000)
    after = query_int(request, "after", 0, MAX_SEQ)
    views = await dlq.list_dead_letters(svc.js, name=agent, limit=limit, after_seq=after)
    return json_response({"dead_letters": [_summary(v) for v in views]})


@routes.get("/api/v1/queue/dlq/{seq}")
@endpoint("One dead letter, with its payload and every attempt's error", response=DeadLetterDetail,
          errors=(404,), tags=("dead letters",))  # fmt: skip
async def show_dlq(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    seq = int(path_value(request, "seq", DLQ_SEQ, f"DLQ sequence number (1 to {MAX_SEQ})"))
    view = await dlq.get_dead_letter(svc.js, seq)
    body = view.entry.model_dump(mode="json")
    body["run_id"] = _run_id(view.entry)
    with contextlib.suppress(ValueError):  # not JSON: payload_b64 is the exact bytes
        body["payload"] = json.loads(view.entry.payload)
    return json_response({"seq": view.seq, **body})


class DlqSelection(BaseModel):
    """Exactly one of: a sequence, an agent, or everything."""

    model_config = ConfigDict(extra="forbid")

    seq: int | None = Field(default=None, ge=1, le=MAX_SEQ)
    agent: str | None = Field(default=None, pattern=AGENT_KEY_RE.pattern)
    all: bool = False

    @model_validator(mode="after")
    def _one(self) -> DlqSelection:
        if sum([self.seq is not None, self.agent is not None, self.all]) != 1:
            raise ValueError('give exactly one of "seq", "agent" or "all": true')
        return self


@routes.post("/api/v1/queue/dlq/replay")
@endpoint("Put dead letters back on their queue: one at once (200), many as an operation (202)",
          body=DlqSelection, response=dlq.ReplayReport | OperationView, status=(200, 202),
          errors=(404, 409), tags=("dead letters",))  # fmt: skip
async def replay_dlq(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    sel = DlqSelection.model_validate(await read_json(request))
    if sel.seq is not None:
        return json_response({"replayed": [await dlq.replay(svc.js, sel.seq)], "failed": []})
    return await accept(request, "dlq.replay", sel.agent or "*", sel)


def dlq_kinds(svc: Services) -> list[OperationKind]:
    """``dlq.replay``: every dead letter of an agent, or all; one failing does not stop the rest."""

    async def replay_many(ctx: OperationContext) -> dict[str, Any]:
        sel = DlqSelection.model_validate(ctx.op.request)
        # At most: letters dead after it was asked are counted here, and left.
        total = await dlq.count(svc.js, origin="tasks", name=sel.agent)

        async def count(report: dlq.ReplayReport) -> None:
            done = len(report.replayed) + len(report.failed)
            percent = 100 * done / max(total, done, 1)
            if int(percent) != int(ctx.op.progress):  # one event a percent, not one a letter
                await ctx.progress(percent, f"{done} of {total} dead letter(s) done")
            else:
                await ctx.progress()  # a cancellation is read here still

        await ctx.progress(0, f"{total} dead letter(s) to replay")
        # Dead by the time it was asked: a resumed start replays no more than the first.
        report = await dlq.replay_all(svc.js, name=sel.agent, dead_by=ctx.op.created_at, after_each=count)
        return report.model_dump()

    return [OperationKind("dlq.replay", replay_many, resumable=True)]


@routes.post("/api/v1/queue/dlq/purge")
@endpoint("Delete dead letters", body=DlqSelection, response=Purged, tags=("dead letters",))
async def purge_dlq(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    sel = DlqSelection.model_validate(await read_json(request))
    purged = await dlq.purge(svc.js, origin="tasks", name=sel.agent, seq=sel.seq)
    return json_response({"purged": purged})


class BatchTask(RunRequest):
    agent: str = Field(pattern=AGENT_KEY_RE.pattern)
    idempotency_key: None = None  # a batch is idempotent by batch_key


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[BatchTask] = Field(min_length=1, max_length=MAX_BATCH)
    batch_key: str | None = Field(default=None, min_length=1, max_length=256)


class BatchRun(BaseModel):
    run_id: str
    agent: str


class BatchAccepted(BaseModel):
    runs: list[BatchRun]
    duplicate: bool = Field(description="its batch_key was seen before: these are that batch's runs")


@routes.post("/api/v1/queue/batch")
@endpoint("Submit up to 1,000 runs at once, all or none", body=BatchRequest, response=BatchAccepted,
          status=202, errors=(402, 404, 409, 429, 503), tags=("runs",))  # fmt: skip
@tenant_scoped
async def submit_batch(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    body = BatchRequest.model_validate(await read_json(request))
    who = principal(request)
    specs = []
    for i, task in enumerate(body.tasks):
        agent = svc.registry.get(task.agent)
        try:
            agent.Input.model_validate(task.input)
        except ValidationError as exc:
            errors = [{**e, "loc": ["tasks", i, "input", *e["loc"]]} for e in validation_errors(exc)]
            raise AgentInputInvalid(f"task {i}: input does not match {agent.key}", errors) from exc
        specs.append(
            TaskSpec(
                agent=agent.key,
                input=task.input,
                tenant=run_tenant(who, task),
                priority=task.priority,
                routing_key=task.routing_key,
                ttl_s=task.ttl_s,
                source="gateway",
                correlation_id=correlation_id(request),
            )
        )
    queued = await svc.queue.enqueue_batch(specs, batch_key=body.batch_key)
    runs = [{"run_id": q.run_id, "agent": s.agent} for q, s in zip(queued, specs, strict=True)]
    return json_response({"runs": runs, "duplicate": bool(queued and queued[0].duplicate)}, status=202)

"""Runs: submit, find, inspect and cancel (``/api/v1/agents/{key}/runs``, ``/api/v1/runs``).

A run's live state comes from the ``af_runs`` bucket (24 h), its permanent
record from PostgreSQL's ``executions``; listings come from the ``runs``
index (:mod:`agents.store.runs`), which lags the bucket by one recorder batch.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from agents.errors import AgentInputInvalid, RunNotFound
from agents.store.executions import get_execution
from agents.store.runs import RunFilter, list_runs
from agents.store.tenancy import tenant_scope
from agents.store.tokens import Principal
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.middleware import correlation_id
from gateway.api.models import RunAccepted, RunRequest, RunView
from gateway.api.params import RUN_ID, ecma_pattern, path_value, query_int, query_value
from gateway.api.problems import validation_errors
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.envelope import Priority
from mesh.errors import BreakerOpen, RunAlreadyFinished
from mesh.names import AGENT_KEY_RE
from mesh.queue.breakers import read_breaker
from mesh.queue.cancel import cancel_run
from mesh.queue.producer import TaskSpec
from mesh.queue.runs import RunState, RunStatus, get_run, stored_task

__all__ = ["routes"]

routes = web.RouteTableDef()

TENANT: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
CURSOR: Final = re.compile(r"[A-Za-z0-9_-]{1,512}")
_STATUS = "|".join(s.value for s in RunStatus)
STATUSES: Final = re.compile(rf"(?:{_STATUS})(?:,(?:{_STATUS}))*")
MAX_PAGE: Final = 1000


class WaitQuery(BaseModel):
    wait: Literal["1", "true"] | None = Field(
        default=None, description="the caller will wait for the result: 503 at once while the breaker is open"
    )


class RunsQuery(BaseModel):
    """``GET /api/v1/runs``; each value must match what it names (else 400)."""

    agent: str | None = Field(default=None, pattern=ecma_pattern(AGENT_KEY_RE.pattern))
    tenant: str | None = Field(default=None, pattern=ecma_pattern(TENANT.pattern))
    status: str | None = Field(default=None, pattern=ecma_pattern(STATUSES.pattern),
                               description="comma-separated run statuses")  # fmt: skip
    since: datetime | None = Field(default=None, description="ISO 8601 time with a UTC offset")
    limit: int = Field(default=50, ge=0, le=MAX_PAGE)
    cursor: str | None = Field(default=None, pattern=ecma_pattern(CURSOR.pattern),
                               description="next_cursor of the page before")  # fmt: skip


class RunSummary(BaseModel):
    """A row of the run index."""

    run_id: str
    agent: str
    tenant: str
    status: str
    priority: str
    attempts: int
    replay: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class RunPage(BaseModel):
    runs: list[RunSummary]
    next_cursor: str | None = Field(description="pass it as ?cursor= for the next page; null on the last")


def run_tenant(who: Principal, body: RunRequest) -> str:
    """The tenant a submitted run belongs to: the body's, or the token's when the
    token is bound to one (naming another is refused, never silently replaced)."""
    if who.tenant is None:
        return body.tenant
    if "tenant" in body.model_fields_set and body.tenant != who.tenant:
        raise web.HTTPForbidden(
            text=f"a token of tenant {who.tenant!r} cannot submit runs for {body.tenant!r}"
        )
    return who.tenant


@routes.post("/api/v1/agents/{key}/runs")
@endpoint("Submit a run of an agent", body=RunRequest, query=WaitQuery, response=RunAccepted, status=202,
          errors=(402, 404, 409, 429, 503), tags=("runs",))  # fmt: skip
@tenant_scoped
async def create_run(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = svc.registry.get(request.match_info["key"])
    body = RunRequest.model_validate(await read_json(request))
    tenant = run_tenant(principal(request), body)
    if request.query.get("wait") in ("1", "true"):  # a caller waiting for the result: fail fast
        await _refuse_if_open(svc, agent.key)
    try:
        agent.Input.model_validate(body.input)
    except ValidationError as exc:
        raise AgentInputInvalid(
            f"input does not match the schema of {agent.key}", validation_errors(exc)
        ) from exc
    spec = TaskSpec(
        agent=agent.key, input=body.input, tenant=tenant, routing_key=body.routing_key,
        priority=body.priority, idempotency_key=body.idempotency_key, ttl_s=body.ttl_s,
        source="gateway", correlation_id=correlation_id(request),
    )  # fmt: skip
    queued = await svc.queue.enqueue(spec)
    url = f"/api/v1/runs/{queued.run_id}"
    accepted = RunAccepted(
        run_id=queued.run_id, agent=agent.key, status=queued.status, duplicate=queued.duplicate, url=url
    )
    response = json_response(accepted.model_dump(), status=202)
    response.headers["Location"] = url
    return response


async def _refuse_if_open(svc: Services, agent: str) -> None:
    """Raise :class:`BreakerOpen` while ``agent``'s breaker is open: its task would wait in the
    queue at least until the breaker half-opens (half-open: accepted, it may run as a trial)."""
    state = svc.breakers.values.get(agent) if svc.breakers is not None else None
    if state is None and svc.breakers is None:
        state, _ = await read_breaker(svc.js, agent)
    if state is not None and state.is_open:
        raise BreakerOpen(agent, state.open_until, state.reason)


@routes.get("/api/v1/runs")
@endpoint("Runs, newest first, a page at a time", query=RunsQuery, response=RunPage, tags=("runs",))
@tenant_scoped
async def list_runs_view(request: web.Request) -> web.Response:
    """Runs newest first; ``?agent=&tenant=&status=a,b&since=<ISO time>&limit=&cursor=``."""
    svc: Services = request.app[SERVICES]
    statuses = query_value(request, "status", STATUSES, "comma-separated list of run statuses")
    where = RunFilter(
        agent=query_value(request, "agent", AGENT_KEY_RE, "agent key"),
        tenant=query_value(request, "tenant", TENANT, "tenant (A-Z, a-z, 0-9, _ and -)"),
        statuses=statuses.split(",") if statuses else (),
        since=_since(request),
    )
    limit = max(1, query_int(request, "limit", 50, MAX_PAGE))
    cursor = query_value(request, "cursor", CURSOR, "cursor from an earlier page")
    async with tenant_scope(svc.pool, principal(request).tenant) as conn:
        rows, after = await list_runs(conn, where, limit=limit, cursor=cursor)
    for row in rows:
        row["priority"] = Priority(row["priority"]).name
        for key in ("enqueued_at", "started_at", "finished_at"):  # ISO 8601, as everywhere
            row[key] = row[key].isoformat() if row[key] is not None else None
    return json_response({"runs": rows, "next_cursor": after})


def _since(request: web.Request) -> datetime | None:
    raw = request.query.get("since") or None
    if raw is None:
        return None
    try:
        since = datetime.fromisoformat(raw)
    except ValueError:
        since = None
    if since is None or since.tzinfo is None:
        raise web.HTTPBadRequest(text=f"since={raw[:60]!r} is not an ISO 8601 time with a UTC offset")
    return since


async def _recorded(svc: Services, who: Principal, run_id: str) -> dict[str, Any]:
    """The run's permanent record, as ``who``'s tenant sees it; 404 if none."""
    async with tenant_scope(svc.pool, who.tenant) as conn:
        row = await get_execution(conn, run_id)
    if row is None:
        raise RunNotFound(run_id)
    return row


@routes.get("/api/v1/runs/{run_id}")
@endpoint("One run's state: live, else its permanent record", response=RunView, errors=(404,),
          tags=("runs",))  # fmt: skip
@tenant_scoped
async def get_run_view(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    who = principal(request)
    run_id = path_value(request, "run_id", RUN_ID, "run id (A-Z, a-z, 0-9, _ and -; at most 128)")
    state = await get_run(svc.js, run_id)
    if state is not None:
        if not who.sees(state.tenant):  # another tenant's run is as absent as one never made
            raise RunNotFound(run_id)
        return json_response(await _live_view(svc, state))
    row = await _recorded(svc, who, run_id)
    view = RunView(
        run_id=row["run_id"], agent=row["agent_key"], tenant=row["tenant"], status=row["status"],
        attempts=row["attempts"], result=row["result"], error=row["error"], errors=row["errors"],
        enqueued_at=row["enqueued_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], progress=100.0 if row["status"] == "succeeded" else None,
        input=row["input"], priority=Priority(row["priority"]).name, replay=row["replay"],
        worker=row["worker"], first_started_at=row["first_started_at"] or row["started_at"],
        idempotency_key=row["idempotency_key"], routing_key=row["routing_key"], audit=row.get("audit"),
    )  # fmt: skip
    return json_response(view.model_dump(mode="json"))


async def _live_view(svc: Services, state: RunState) -> dict[str, Any]:
    run_input = state.input
    if run_input is None and not state.status.finished:  # a live record does not copy it
        task = await stored_task(svc.js, state)
        if task is not None and isinstance(task.payload, dict):
            run_input = task.payload.get("input")
    view = RunView(
        run_id=state.run_id, agent=state.agent, tenant=state.tenant, status=state.status.value,
        attempts=state.attempts, progress=state.progress, result=state.result,
        error=state.error, errors=[e.model_dump(mode="json") for e in state.errors],
        enqueued_at=state.enqueued_at, started_at=state.started_at,
        finished_at=state.finished_at, input=run_input, priority=Priority(state.priority).name,
        replay=state.replay, worker=state.worker,
        first_started_at=state.first_started_at or state.started_at, audit=state.audit,
        idempotency_key=state.idempotency_key, routing_key=state.routing_key,
    )  # fmt: skip
    return view.model_dump(mode="json")


@routes.delete("/api/v1/runs/{run_id}")
@endpoint("Cancel a queued or running run", response=RunView, errors=(404, 409), tags=("runs",))
@tenant_scoped
async def cancel_run_view(request: web.Request) -> web.Response:
    """Cancel a queued or running run: 200 with its state, 409 if it already finished."""
    svc: Services = request.app[SERVICES]
    who = principal(request)
    run_id = path_value(request, "run_id", RUN_ID, "run id (A-Z, a-z, 0-9, _ and -; at most 128)")
    if who.tenant is not None:  # a run's tenant never changes: checked once, before it is touched
        live = await get_run(svc.js, run_id)
        if live is not None and not who.sees(live.tenant):
            raise RunNotFound(run_id)
    state = await cancel_run(svc.nc, svc.js, run_id, reason="by request")
    if state is None:
        raise RunAlreadyFinished(run_id, (await _recorded(svc, who, run_id))["status"])
    return json_response(await _live_view(svc, state))

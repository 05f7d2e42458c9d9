"""Routes of the management API (``/api/v1``) and the operational endpoints."""

from __future__ import annotations

from aiohttp import web
from pydantic import ValidationError

from agents.errors import AgentInputInvalid, RunNotFound
from agents.store.executions import get_execution
from gateway.api.bodies import json_response, read_json
from gateway.api.models import RunAccepted, RunRequest, RunView
from gateway.api.params import RUN_ID, path_value
from gateway.api.problems import validation_errors
from gateway.api.services import SERVICES, Services
from gateway.worker_metrics import CONTENT_TYPE, merged_metrics
from mesh.queue import TaskSpec
from mesh.runs import get_run

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/api/v1/agents/{key}/runs")
async def create_run(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = svc.registry.get(request.match_info["key"])
    body = RunRequest.model_validate(await read_json(request))
    try:
        agent.Input.model_validate(body.input)
    except ValidationError as exc:
        raise AgentInputInvalid(
            f"input does not match the schema of {agent.key}", validation_errors(exc)
        ) from exc
    spec = TaskSpec(
        agent=agent.key, input=body.input, tenant=body.tenant, routing_key=body.routing_key,
        priority=body.priority, idempotency_key=body.idempotency_key, ttl_s=body.ttl_s,
        source="gateway",
    )  # fmt: skip
    queued = await svc.queue.enqueue(spec)
    url = f"/api/v1/runs/{queued.run_id}"
    accepted = RunAccepted(run_id=queued.run_id, agent=agent.key, duplicate=queued.duplicate, url=url)
    response = json_response(accepted.model_dump(), status=202)
    response.headers["Location"] = url
    return response


@routes.get("/api/v1/runs/{run_id}")
async def get_run_view(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    run_id = path_value(request, "run_id", RUN_ID, "run id (A-Z, a-z, 0-9, _ and -; at most 128)")
    state = await get_run(svc.js, run_id)
    if state is not None:
        view = RunView(
            run_id=state.run_id, agent=state.agent, tenant=state.tenant, status=state.status.value,
            attempts=state.attempts, progress=state.progress, result=state.result,
            error=state.error, errors=[e.model_dump(mode="json") for e in state.errors],
            enqueued_at=state.enqueued_at, started_at=state.started_at,
            finished_at=state.finished_at,
        )  # fmt: skip
        return json_response(view.model_dump(mode="json"))
    row = await get_execution(svc.pool, run_id)
    if row is None:
        raise RunNotFound(run_id)
    view = RunView(
        run_id=row["run_id"], agent=row["agent_key"], tenant=row["tenant"], status=row["status"],
        attempts=row["attempts"], result=row["result"], error=row["error"], errors=row["errors"],
        enqueued_at=row["enqueued_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], progress=100.0 if row["status"] == "succeeded" else None,
    )  # fmt: skip
    return json_response(view.model_dump(mode="json"))


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agents = []
    for agent in svc.registry:
        desc = agent.describe()
        desc["state"] = "serving" if agent.key in svc.served_agents() else "registered"
        agents.append(desc)
    return json_response({"agents": agents})


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    checks: dict[str, str] = {}
    try:
        await svc.js.account_info()
        checks["nats"] = "ok"
    except Exception as exc:
        checks["nats"] = f"error: {exc}"
    try:
        await svc.pool.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {exc}"
    ready = all(v == "ok" for v in checks.values())
    return json_response({"status": "ready" if ready else "not ready", "checks": checks},
                 status=200 if ready else 503)  # fmt: skip


@routes.get("/metrics")
async def prometheus(request: web.Request) -> web.Response:
    """This process's metrics and those of the worker pools in its data dir
    (:mod:`gateway.worker_metrics`): one scrape target for the platform."""
    svc: Services = request.app[SERVICES]
    return web.Response(body=await merged_metrics(svc.settings.data_dir), content_type=CONTENT_TYPE)

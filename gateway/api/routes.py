"""Routes of the management API (``/api/v1``): agents, and the operational endpoints
(runs are in :mod:`gateway.api.runs`)."""

from __future__ import annotations

import functools
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from agents.sandbox import detect_levels
from agents.sandbox.levels import log_levels_once
from gateway.api.auth import tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.models import AgentView, SandboxView
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from gateway.worker_metrics import CONTENT_TYPE, merged_metrics, metrics_response, wants_openmetrics

__all__ = ["routes"]

routes = web.RouteTableDef()


class AgentList(BaseModel):
    agents: list[AgentView]
    sandbox: SandboxView


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(description='per dependency (nats, postgres): "ok" or "error: ..."')
    sandbox: SandboxView


@routes.get("/api/v1/agents")
@endpoint("Every registered agent, with its schemas", response=AgentList, tags=("agents",))
@tenant_scoped  # the catalog: no tenant's data
async def list_agents(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agents = []
    for agent in svc.registry:
        desc = agent.describe()
        desc["state"] = "serving" if agent.key in svc.served_agents() else "registered"
        agents.append(desc)
    return json_response({"agents": agents, "sandbox": _sandbox(svc)})


def _sandbox(svc: Services) -> dict[str, Any]:
    """Whether pool workers sandbox each task, and what containment this host gives
    (found once per process: :func:`agents.sandbox.detect_levels`)."""
    return {"enabled": svc.settings.sandbox, "levels": _levels()}


@functools.cache
def _levels() -> dict[str, Any]:
    levels = detect_levels()
    log_levels_once(levels)
    return levels.as_dict()


@routes.get("/healthz")
@endpoint("Liveness: the gateway answers", response=Health, tags=("operations",))
async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


@routes.get("/readyz")
@endpoint("Readiness: NATS and PostgreSQL answer (503 when not)", response=Readiness, status=(200, 503),
          tags=("operations",))  # fmt: skip
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
    body = {"status": "ready" if ready else "not ready", "checks": checks, "sandbox": _sandbox(svc)}
    return json_response(body, status=200 if ready else 503)


@routes.get("/metrics")
@endpoint("Prometheus metrics of the gateway and its worker pools", response=str,
          media_type=CONTENT_TYPE, tags=("operations",))  # fmt: skip
async def prometheus(request: web.Request) -> web.Response:
    """This process's metrics and those of the worker pools in its data dir
    (:mod:`gateway.worker_metrics`): one scrape target for the platform."""
    svc: Services = request.app[SERVICES]
    openmetrics = wants_openmetrics(request.headers.get("Accept"))
    return metrics_response(await merged_metrics(svc.settings.data_dir, openmetrics), openmetrics)

"""An agent's lifecycle over the API: act on it, see its health, read its history.

* ``POST /api/v1/agents/{key}/lifecycle`` ``{"action": "deploy"|"drain"|"retire"|"restart"|"force-stop",
  "version"?, "reason"?, "drain_timeout_s"? (default 30, at most 300), "wait"? (drain only),
  "mode"? ("pool"|"dedicated", deploy only)}``:
  the transitions made and where the version ended (:mod:`agents.lifecycle.actions`).
  409 when another manager is changing the agent or the state machine forbids it
  (the answer names the current state and the allowed next ones), 404 for an
  unknown version, 422 for a version this gateway cannot deploy.
* ``GET /api/v1/agents/{key}/health``: every version's state, the dispatch gate
  workers obey, and what each worker holds of the agent now with its probes'
  last results, summed up as ``status`` (:func:`agents.lifecycle.health.aggregate`).
* ``GET /api/v1/agents/{key}/history?limit=&before=``: transitions, newest first
  (``next`` pages on).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.lifecycle.actions import DEFAULT_DRAIN_S, MAX_DRAIN_S, Action
from agents.lifecycle.health import aggregate
from agents.lifecycle.manager import Mode
from agents.lifecycle.states import State
from gateway.api.bodies import json_response, read_json
from gateway.api.params import PG_TEXT, path_value, query_int
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.names import AGENT_KEY_RE
from mesh.queue.gates import HeldBy, held_tasks, read_gates
from mesh.queue.runs import LifecycleChanged

__all__ = ["LifecycleRequest", "routes"]

routes = web.RouteTableDef()

VERSION: Final = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ACTOR: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")
MAX_HISTORY: Final = 1000


class LifecycleRequest(BaseModel):
    """``POST /api/v1/agents/{key}/lifecycle``."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    version: str | None = Field(default=None, pattern=VERSION, description="default: the live one")
    reason: str | None = Field(default=None, max_length=500, pattern=PG_TEXT)  # stored: no NUL
    drain_timeout_s: float = Field(default=DEFAULT_DRAIN_S, gt=0, le=MAX_DRAIN_S)
    wait: bool = Field(default=False, description="drain: return once nothing of it runs")
    mode: Literal["pool", "dedicated"] | None = Field(
        default=None, description="deploy: shared workers, or processes of its own [default: the agent's]"
    )


class TransitionView(LifecycleChanged):
    published: bool = Field(description="its gate and event are confirmed stored")


class LifecycleOutcome(BaseModel):
    """What an action did: the transitions made, where the version ended, and why."""

    agent: str
    version: str
    action: Action
    state: State
    detail: str
    transitions: list[TransitionView]
    held: list[HeldBy] = Field(description="what workers still held when it ended")


class VersionView(BaseModel):
    agent: str
    version: str
    state: State
    mode: Mode
    reason: str | None
    revision: int
    updated_at: datetime


class AgentHealth(BaseModel):
    agent: str
    status: Literal["ready", "degraded", "not_ready", "unknown"] = Field(
        description="over the workers' probes"
    )
    managed: bool = Field(description="has a lifecycle record (else it runs wherever it is served)")
    versions: list[VersionView]
    gate: str = Field(description='the dispatch gate workers obey: "open", "closed (draining)" ...')
    workers: list[HeldBy]


class History(BaseModel):
    agent: str
    transitions: list[TransitionView]
    next: int | None = Field(description="pass it as ?before= for older ones; null: no more")


class HistoryQuery(BaseModel):
    limit: int = Field(default=50, ge=0, le=MAX_HISTORY)
    before: int = Field(default=0, ge=0, le=2**63 - 1, description="the next of the page before")


def _actor(request: web.Request) -> str:
    """Who asked, for the audit row: ``api``, or ``api:<name>`` from an ``AF-Actor`` header."""
    name = request.headers.get("AF-Actor", "")
    return f"api:{name}" if ACTOR.fullmatch(name) else "api"


@routes.post("/api/v1/agents/{key}/lifecycle")
@endpoint("Deploy, drain, retire, restart or force-stop an agent version", body=LifecycleRequest,
          response=LifecycleOutcome, errors=(404, 409), tags=("lifecycle",))  # fmt: skip
async def act(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "key", AGENT_KEY_RE, "agent key")
    body = LifecycleRequest.model_validate(await read_json(request))
    outcome = await svc.lifecycle.run(
        agent, body.action, actor=_actor(request), version=body.version, reason=body.reason,
        drain_timeout_s=body.drain_timeout_s, wait=body.wait, mode=body.mode,
    )  # fmt: skip
    return json_response(outcome.as_dict())


@routes.get("/api/v1/agents/{key}/health")
@endpoint("An agent's versions, dispatch gate and what each worker holds", response=AgentHealth,
          tags=("lifecycle",))  # fmt: skip
async def health(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "key", AGENT_KEY_RE, "agent key")
    versions = await svc.lifecycle.manager.versions(agent)
    gate = (await read_gates(svc.js)).get(agent)
    held = await held_tasks(svc.nc, agent)
    return json_response({
        "agent": agent,
        "status": aggregate(held),  # over the workers' probes: ready, degraded, not_ready, unknown
        "managed": bool(versions),  # an agent with no lifecycle record runs wherever it is served
        "versions": [v.as_dict() for v in versions],
        "gate": gate.describe() if gate else "open",
        "workers": [h.model_dump() for h in held],
    })  # fmt: skip


@routes.get("/api/v1/agents/{key}/history")
@endpoint("An agent's lifecycle transitions, newest first", query=HistoryQuery, response=History,
          tags=("lifecycle",))  # fmt: skip
async def history(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "key", AGENT_KEY_RE, "agent key")
    limit = query_int(request, "limit", 50, MAX_HISTORY) or 1
    before = query_int(request, "before", 0, 2**63 - 1) or None
    found = await svc.lifecycle.manager.history(agent, limit, before)
    return json_response({
        "agent": agent,
        "transitions": [t.as_dict() for t in found],
        "next": found[-1].id if len(found) == limit else None,
    })  # fmt: skip

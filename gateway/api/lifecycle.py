"""An agent's lifecycle over the API: act on it, see its health, read its history.

* ``POST /api/v1/agents/{key}/lifecycle``
  ``{"action": "deploy"|"drain"|"retire"|"restart"|"force-stop"|"rollback", "version"?,
  "reason"?, "drain_timeout_s"? (default 30, at most 300), "wait"? (drain only),
  "mode"? ("pool"|"dedicated", deploy only)}`` (rollback: "version" is the one to go
  back to): ``202`` and an operation of kind ``agent.<action>``
  (:mod:`gateway.api.operations`), whose result is the transitions made and
  where the version ended (:mod:`agents.lifecycle.actions`);
  it fails when the version ends FAILED. Refused at once what the first step
  would refuse: 409 when the state machine forbids it (the answer names the
  current state and the allowed next ones), 404 for an unknown version, 422 for
  a version this gateway cannot deploy. Not resumed after its gateway died: a
  transition half made is for an operator to look at (failed with the reason).
* ``GET /api/v1/agents/{key}/health``: every version's state, the dispatch gate
  workers obey, and what each worker holds of the agent now with its probes'
  last results, summed up as ``status`` (:func:`agents.lifecycle.health.aggregate`).
* ``GET /api/v1/agents/{key}/history?limit=&before=``: transitions, newest first
  (``next`` pages on).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.lifecycle.actions import DEFAULT_DRAIN_S, MAX_DRAIN_S, Action, Outcome
from agents.lifecycle.health import aggregate
from agents.lifecycle.manager import Mode
from agents.lifecycle.states import State
from gateway.api.bodies import json_response, read_json
from gateway.api.operations import OperationView, accept
from gateway.api.params import PG_TEXT, path_value, query_int
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from gateway.operations import OperationContext, OperationFailed, OperationKind
from mesh.names import AGENT_KEY_RE
from mesh.queue.gates import HeldBy, held_tasks, read_gates
from mesh.queue.runs import LifecycleChanged

__all__ = ["LifecycleOperation", "LifecycleRequest", "lifecycle_kinds", "routes"]

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


class LifecycleOperation(LifecycleRequest):
    """What an ``agent.<action>`` operation keeps of its request: the body and who asked."""

    actor: str


def _actor(request: web.Request) -> str:
    """Who asked, for the audit row: ``api``, or ``api:<name>`` from an ``AF-Actor`` header."""
    name = request.headers.get("AF-Actor", "")
    return f"api:{name}" if ACTOR.fullmatch(name) else "api"


@routes.post("/api/v1/agents/{key}/lifecycle")
@endpoint("Deploy, drain, retire, restart or force-stop an agent version (an operation)",
          body=LifecycleRequest, response=OperationView, status=202, errors=(404, 409),
          tags=("lifecycle",))  # fmt: skip
async def act(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "key", AGENT_KEY_RE, "agent key")
    body = LifecycleRequest.model_validate(await read_json(request))
    asked = LifecycleOperation(**body.model_dump(), actor=_actor(request))

    async def check() -> None:
        await svc.lifecycle.check(agent, body.action, version=body.version, mode=body.mode)

    return await accept(request, f"agent.{body.action.value}", agent, asked, check=check)


# How many transitions each action makes when it goes the whole way (its progress).
_STEPS: Final = {Action.DEPLOY: 5, Action.DRAIN: 1, Action.RETIRE: 2, Action.RESTART: 5, Action.FORCE_STOP: 2,
                  Action.ROLLBACK: 7}  # fmt: skip


def lifecycle_kinds(svc: Services) -> list[OperationKind]:
    """``agent.deploy``, ``agent.drain``, …: one kind per action."""

    async def act_on(ctx: OperationContext) -> dict[str, Any]:
        asked = LifecycleOperation.model_validate(ctx.op.request)

        async def checkpoint(out: Outcome, stoppable: bool) -> None:
            done = 100 * len(out.transitions) / (_STEPS[out.action] + (1 if asked.wait else 0))
            last = out.transitions[-1] if out.transitions else None
            said = f"{last.from_state.value} -> {last.to_state.value}" if last else out.state.value
            await ctx.progress(min(done, 95), f"{said}: {out.detail}" if out.detail else said,
                               cancellable=stoppable)  # fmt: skip

        outcome = await svc.lifecycle.run(
            ctx.op.target, asked.action, actor=asked.actor, version=asked.version, reason=asked.reason,
            drain_timeout_s=asked.drain_timeout_s, wait=asked.wait, mode=asked.mode, checkpoint=checkpoint,
        )  # fmt: skip
        if outcome.state == State.FAILED:
            why = f"{outcome.agent} {outcome.version} failed: {outcome.detail}"
            raise OperationFailed(why, outcome.as_dict())
        return outcome.as_dict()

    why = ("a lifecycle action is not redone after an interruption: see `agent-factory agent status "
           "<agent>` and `history`, then act again")  # fmt: skip
    return [OperationKind(f"agent.{action.value}", act_on, not_resumable=why) for action in Action]


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

"""One agent over the API: ``GET /api/v1/agents/{key}``.

Its description, version, input and output schemas, whether this gateway's
workers serve it, and its resilience block: as declared, the queue settings
it becomes, and why it cannot apply (``problem``, else null). 400 for a
value that is not an agent key, 404 for an agent this gateway does not know.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field

from agents.resilience.guard import describe_resilience
from agents.resilience.policy import Resilience
from gateway.api.auth import tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.models import AgentView
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.names import AGENT_KEY_RE

__all__ = ["routes"]

routes = web.RouteTableDef()


class LaneSettings(BaseModel):
    """The queue settings an agent's resilience block becomes."""

    max_attempts: int
    backoff_base_s: float
    backoff_max_s: float
    jitter: float
    concurrency: int | None
    ack_wait_s: float


class ResilienceView(BaseModel):
    block: Resilience = Field(description="as declared")
    queue: LaneSettings
    enforced_in_handler: bool = Field(description="does any policy act around run")
    problem: str | None = Field(description="why the block cannot apply in this gateway; null: it does")


class AgentDetail(AgentView):
    resilience: ResilienceView


@routes.get("/api/v1/agents/{key}")
@endpoint("One agent: schemas, state and resilience", response=AgentDetail, errors=(404,), tags=("agents",))
@tenant_scoped  # the catalog: no tenant's data
async def agent_detail(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    key = path_value(request, "key", AGENT_KEY_RE, "agent key")
    agent = svc.registry.get(key)  # AgentNotFound: 404
    detail = agent.describe()
    detail["state"] = "serving" if key in svc.served_agents() else "registered"
    detail["resilience"] = describe_resilience(agent, svc.registry)
    return json_response(detail)

"""One agent over the API: ``GET /api/v1/agents/{key}``.

Its description, version, input and output schemas, whether this gateway's
workers serve it, and its resilience block: as declared, the queue settings
it becomes, and why it cannot apply (``problem``, else null). 400 for a
value that is not an agent key, 404 for an agent this gateway does not know.
"""

from __future__ import annotations

from aiohttp import web

from agents.resilience.guard import describe_resilience
from gateway.api.auth import tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from mesh.names import AGENT_KEY_RE

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/api/v1/agents/{key}")
@tenant_scoped  # the catalog: no tenant's data
async def agent_detail(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    key = path_value(request, "key", AGENT_KEY_RE, "agent key")
    agent = svc.registry.get(key)  # AgentNotFound: 404
    detail = agent.describe()
    detail["state"] = "serving" if key in svc.served_agents() else "registered"
    detail["resilience"] = describe_resilience(agent, svc.registry)
    return json_response(detail)

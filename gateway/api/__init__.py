"""The aiohttp management API."""

from __future__ import annotations

from aiohttp import web

from gateway.api.agent_detail import routes as agent_detail_routes
from gateway.api.auth import TOKENS, TokenCache, auth_middleware
from gateway.api.breakers import routes as breaker_routes
from gateway.api.canary import routes as canary_routes
from gateway.api.channels import routes as channel_routes
from gateway.api.config import routes as config_routes
from gateway.api.costs import routes as cost_routes
from gateway.api.docs import routes as docs_routes
from gateway.api.hub import hub_kinds
from gateway.api.hub import routes as hub_routes
from gateway.api.hub_deps import routes as hub_deps_routes
from gateway.api.installs import install_kinds
from gateway.api.installs import routes as install_routes
from gateway.api.lifecycle import lifecycle_kinds
from gateway.api.lifecycle import routes as lifecycle_routes
from gateway.api.middleware import access_middleware, rate_limit_middleware
from gateway.api.operations import routes as operation_routes
from gateway.api.problems import problem_middleware
from gateway.api.queue import dlq_kinds
from gateway.api.queue import routes as queue_routes
from gateway.api.routes import routes
from gateway.api.runs import routes as run_routes
from gateway.api.schedules import routes as schedule_routes
from gateway.api.services import SERVICES, Services
from gateway.api.tokens import routes as token_routes
from gateway.operations import OperationKind

__all__ = ["SERVICES", "Services", "create_app", "operation_kinds"]


def operation_kinds(services: Services) -> list[OperationKind]:
    """The long operations the API starts (``202``): each route module's kinds."""
    return [*lifecycle_kinds(services), *dlq_kinds(services), *hub_kinds(services), *install_kinds(services)]


def create_app(services: Services, auth: bool) -> web.Application:
    """The API app. ``auth=False`` lets every request act as an admin (the embedded
    dev mode only); else requests need a token of ``api_tokens``."""
    s = services.settings
    # Outermost first: every answer (a 401, a 429, a problem) is logged and carries
    # the correlation id; a rate-limited request is refused before its token is checked.
    limit = rate_limit_middleware(s.api_rate_per_s, s.api_burst)
    app = web.Application(
        middlewares=[access_middleware, problem_middleware, limit, auth_middleware(auth)],
        client_max_size=s.max_payload_bytes,
    )
    app[SERVICES] = services
    app[TOKENS] = TokenCache(services.pool)
    app.add_routes(routes)
    app.add_routes(run_routes)
    app.add_routes(queue_routes)
    app.add_routes(schedule_routes)
    app.add_routes(channel_routes)
    app.add_routes(lifecycle_routes)
    app.add_routes(agent_detail_routes)
    app.add_routes(cost_routes)
    app.add_routes(breaker_routes)
    app.add_routes(canary_routes)
    app.add_routes(hub_deps_routes)  # first: /{package}/compat before /{package}/{version}
    app.add_routes(hub_routes)
    app.add_routes(install_routes)
    app.add_routes(docs_routes)
    app.add_routes(token_routes)
    app.add_routes(operation_routes)
    app.add_routes(config_routes)
    return app

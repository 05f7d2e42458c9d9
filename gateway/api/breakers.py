"""Circuit breakers (``/api/v1/breakers``): every agent's, and an operator's force-open or force-close.

The breaker processor decides (``streams.processors.breaker``); an operator
overrides it here. A forced transition is audited on
``af.events.breaker.changed.<agent>`` (who: ``by``, when, why: ``reason``), as
every transition is, and the forced state says ``forced_by``.
"""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.bodies import json_response, read_json
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.names import AGENT_KEY_RE
from mesh.queue.breakers import BreakerState, force_breaker, read_breakers

__all__ = ["ForceBreaker", "routes"]

routes = web.RouteTableDef()


class ForceBreaker(BaseModel):
    """``POST /api/v1/breakers/{agent}``: force it open (for ``open_for_s``, or until
    closed by hand) or closed; with ``version``, that version's breaker only."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["open", "close"]
    reason: str = Field(min_length=1, max_length=1000)
    by: str = Field(min_length=1, max_length=200)  # who: the operator, for the audit
    open_for_s: float | None = Field(None, gt=0, le=30 * 86_400)
    # Any characters (version_key escapes them), but a dot only between two others: an
    # empty token ("1.0.", "1..0") makes no KV key.
    version: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[^.]+(?:\.[^.]+)*$")


class BreakerList(BaseModel):
    breakers: list[BreakerState]


@routes.get("/api/v1/breakers")
@endpoint("Every breaker that is not plainly closed", response=BreakerList, tags=("breakers",))
async def list_breakers(request: web.Request) -> web.Response:
    """Every breaker with a key: agents', and versions' (``version`` set); those not listed are closed."""
    svc: Services = request.app[SERVICES]
    states = await read_breakers(svc.js)
    return json_response({"breakers": [s.model_dump(mode="json") for _, s in sorted(states.items())]})


@routes.post("/api/v1/breakers/{agent}")
@endpoint("Force an agent's (or a version's) breaker open or closed", body=ForceBreaker,
          response=BreakerState, tags=("breakers",))  # fmt: skip
async def force(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "agent", AGENT_KEY_RE, "agent key")
    body = ForceBreaker.model_validate(await read_json(request))
    if body.open_for_s is not None and body.action == "close":
        raise web.HTTPBadRequest(text="open_for_s is for action open only")
    state = await force_breaker(
        svc.js, agent, body.action == "open", body.by, body.reason, body.open_for_s, body.version
    )
    if svc.breakers is not None:  # this gateway's callers see it at once, not at the write's echo
        svc.breakers.values[state.scope] = state
    return json_response(state.model_dump(mode="json"))

"""Canary metrics of an agent's versions: ``GET /api/v1/canary/{agent}/metrics``.

What the canary processor last put in ``af_canary_metrics`` (one entry per
version, ``<agent>.<version>``; docs/processors-canary.md): per window, the
requests, errors, error rate, p50/p95/p99 duration and cost per task, or
``"insufficient data"`` below the minimum sample count. ``?version=`` picks one
version, ``?window=`` (1m, 5m, 15m, 1h) one window. 400 for a value that
cannot name an agent, version or window; 404 when the processor has no metrics
for it yet (no finished execution of it seen, or the processor is not running).
"""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web
from pydantic import BaseModel, Field

from gateway.api.bodies import json_response
from gateway.api.params import ecma_pattern, path_value, query_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh import names
from mesh.canary import WINDOWS, VersionMetrics, read_version_metrics

__all__ = ["routes"]

routes = web.RouteTableDef()

# A dot only between two other characters: the version is part of a KV key
# (mesh.names.version_key), and "1.0." or "1..0" would make an empty token, no key.
VERSION: Final = re.compile(r"[A-Za-z0-9](?:\.?[A-Za-z0-9_+-]){0,127}")
WINDOW: Final = re.compile("|".join(WINDOWS))


class CanaryQuery(BaseModel):
    version: str | None = Field(default=None, pattern=ecma_pattern(VERSION.pattern))
    window: str | None = Field(default=None, pattern=ecma_pattern(WINDOW.pattern))


class CanaryMetrics(BaseModel):
    agent: str
    versions: list[VersionMetrics]


@routes.get("/api/v1/canary/{agent}/metrics")
@endpoint("Canary metrics of an agent's versions, per window", query=CanaryQuery, response=CanaryMetrics,
          errors=(404,), tags=("canary",))  # fmt: skip
async def canary_metrics(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "agent", names.AGENT_KEY_RE, "agent key")
    version = query_value(request, "version", VERSION, "version")
    window = query_value(request, "window", WINDOW, f"window (one of {', '.join(WINDOWS)})")
    found = await read_version_metrics(svc.js, agent, version)
    if not found:
        which = f"{agent} version {version}" if version else agent
        raise web.HTTPNotFound(
            text=f"no canary metrics for {which} yet: the canary processor has counted no finished "
            "execution of it (is it running? `agent-factory processors --only canary`)"
        )
    if window is not None:
        for metrics in found:
            metrics.windows = {window: metrics.windows[window]}
    return json_response({"agent": agent, "versions": [m.model_dump(mode="json") for m in found]})

"""The hub's dependency routes: a version's resolved dependency graph, a local pack's
(its dependencies sent as the body), and a package's compatibility matrix.

Resolved against the public versions and one tenant's own: the caller's tenant,
or for a token of every tenant the package's (:mod:`agents.hub.dependencies`).
A conflict is a ``409`` problem whose ``chains`` are the requirement chains that
collide; a cycle a ``422`` problem with its ``cycle`` path. These routes are
added before :mod:`gateway.api.hub`'s, so ``/{package}/compat`` is not read as a
version named ``compat``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.hub import Hub
from agents.hub.dependencies import compat_matrix, package_graph
from agents.packaging.spec import AgentName, RangeText, SemVerText
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.hub import PACKAGE, VERSION
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint

__all__ = ["routes"]

routes = web.RouteTableDef()

_PATH = {"package": PACKAGE, "version": VERSION}


class GraphNode(BaseModel):
    name: str
    version: str | None
    level: int = Field(description="0: needs nothing; each level needs only lower ones")


class GraphEdge(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="the agent that depends …")
    to: str = Field(description="… on this one")
    range: str = Field(description="the range it asks for")


class PackageGraph(BaseModel):
    package: str
    version: str
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    order: list[str] = Field(description="dependencies first, ties by name")
    levels: list[list[str]] = Field(description="groups that may be installed or started in parallel")


class ResolveRequest(BaseModel):
    """A pack that is not in the hub (yet): what its agent.pack.yaml says."""

    model_config = ConfigDict(extra="forbid")

    name: AgentName
    version: SemVerText
    dependencies: dict[AgentName, RangeText] = Field(default_factory=dict, max_length=200)


class DependencyFit(BaseModel):
    range: str
    satisfied_by: list[str] = Field(description="the versions (not yanked) that satisfy it, newest first")


class VersionCompat(BaseModel):
    version: str
    scope: str = Field(description="public, or the tenant whose build it is")
    yanked: bool
    platform: str | None = Field(description="the platform range it declares; null: any")
    platform_compatible: bool
    dependencies: dict[str, DependencyFit]
    resolves: bool = Field(description="one version of each dependency satisfies every range")
    problem: str | None = Field(description="why it does not resolve")
    compatible: bool = Field(description="platform_compatible and resolves")


class CompatMatrix(BaseModel):
    package: str
    platform: str = Field(description="this platform's version")
    versions: list[VersionCompat] = Field(description="newest first")


def _hub(request: web.Request) -> Hub:
    svc: Services = request.app[SERVICES]
    return Hub(svc.pool, svc.nc, svc.js)


@routes.get("/api/v1/hub/packages/{package}/compat")
@endpoint("A package's compatibility matrix: each version against this platform and its dependencies",
          response=CompatMatrix, path={"package": PACKAGE}, errors=(404,), tags=("hub",))  # fmt: skip
@tenant_scoped
async def compat(request: web.Request) -> web.Response:
    name = path_value(request, "package", PACKAGE, "package name")
    matrix = await compat_matrix(_hub(request), name, tenant=principal(request).tenant)
    if not matrix["versions"]:
        raise web.HTTPNotFound(text=f"no package {name} in the hub")
    return json_response(matrix)


@routes.get("/api/v1/hub/packages/{package}/{version}/graph")
@endpoint("A version's dependencies, resolved against the hub: nodes, edges, order, levels",
          response=PackageGraph, path=_PATH, errors=(404, 409, 422), tags=("hub",))  # fmt: skip
@tenant_scoped
async def graph(request: web.Request) -> web.Response:
    """``409``: no set of versions satisfies every range (``chains``: the requirement
    chains that collide); ``422``: the dependencies form a cycle (``cycle``: its path)."""
    name = path_value(request, "package", PACKAGE, "package name")
    version = path_value(request, "version", VERSION, "version")
    hub, tenant = _hub(request), principal(request).tenant
    package = await hub.get(name, version, tenant=tenant)
    deps: dict[str, str] = (package.manifest.get("spec") or {}).get("dependencies") or {}
    scope = tenant if tenant is not None else package.tenant  # every tenant's token: the package's
    return json_response(await package_graph(hub, name, version, deps, tenant=tenant, scope=scope))


@routes.post("/api/v1/hub/resolve")
@endpoint("Resolve a pack's dependencies against the hub (a local pack, not published)",
          body=ResolveRequest, response=PackageGraph, errors=(409, 422), tags=("hub",))  # fmt: skip
@tenant_scoped
async def resolve_pack(request: web.Request) -> web.Response:
    """The same answer as a published version's ``/graph``, for the name, version and
    dependencies a pack's ``agent.pack.yaml`` declares."""
    asked = ResolveRequest.model_validate(await read_json(request))
    tenant = principal(request).tenant  # every tenant's token: public packages only
    found: dict[str, Any] = await package_graph(
        _hub(request), asked.name, asked.version, asked.dependencies, tenant=tenant, scope=tenant
    )
    return json_response(found)

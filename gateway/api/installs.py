"""Installing hub packages into the platform: ``POST /api/v1/hub/installs`` (an
operation ``hub.install``, :mod:`agents.hub.install`) and the list of what is
installed.

Installing puts code into the platform, for every tenant: a token of every
tenant is needed (a tenant's token gets 403). The package may be public or a
tenant's own (``tenant``). With ``deploy``, the installed version is deployed
at once through the lifecycle (dedicated workers of its own, in its
directory); else ``agent deploy KEY --version V`` does it later.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.hub.install import know_installed
from agents.lifecycle.actions import Action
from agents.lifecycle.states import State
from agents.store.installs import InstalledVersion, list_installed
from gateway.api.auth import principal
from gateway.api.bodies import json_response, read_json
from gateway.api.hub import PACKAGE, VERSION
from gateway.api.operations import OperationView, accept
from gateway.api.params import query_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from gateway.operations import OperationContext, OperationFailed, OperationKind
from mesh.names import AGENT_KEY_RE

__all__ = ["install_kinds", "routes"]

routes = web.RouteTableDef()


class InstallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{PACKAGE.pattern}$", description="the package, which is the agent's key")
    version: str | None = Field(
        default=None, pattern=f"^{VERSION.pattern}$", description="default: its highest version not yanked"
    )
    tenant: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="install this tenant's own package of that name; default: the public one",
    )  # fmt: skip
    deploy: bool = Field(default=False, description="then deploy it (dedicated workers of its own)")


class InstallOperation(InstallRequest):
    actor: str


class InstalledList(BaseModel):
    installed: list[InstalledVersion]


@routes.post("/api/v1/hub/installs")
@endpoint("Install a hub package into the platform (an operation), and deploy it if asked",
          body=InstallRequest, response=OperationView, status=202, errors=(403, 404, 409, 422),
          tags=("hub",))  # fmt: skip
async def install(request: web.Request) -> web.Response:
    body = InstallRequest.model_validate(await read_json(request))
    asked = InstallOperation(**body.model_dump(), actor=f"api:{principal(request).token_id}")
    return await accept(request, "hub.install", body.name, asked)


@routes.get("/api/v1/hub/installs")
@endpoint("The agent versions installed from the hub", response=InstalledList, tags=("hub",))
async def installed(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    agent = query_value(request, "agent", AGENT_KEY_RE, "agent key")
    rows = await list_installed(svc.pool, agent)
    return json_response(InstalledList(installed=rows).model_dump(mode="json"))


def install_kinds(svc: Services) -> list[OperationKind]:
    """``hub.install``: resumable, as installing the same package again changes nothing."""

    async def run(ctx: OperationContext) -> dict[str, Any]:
        asked = InstallOperation.model_validate(ctx.op.request)
        installer = svc.lifecycle.installer
        if installer is None:
            raise OperationFailed("this gateway does not install packages")
        *dependencies, row = await installer.install(
            asked.name, asked.version, hub_tenant=asked.tenant, actor=asked.actor, progress=ctx.progress
        )
        await know_installed(svc.pool, svc.registry)
        result: dict[str, Any] = {
            "installed": row.model_dump(mode="json"),
            "dependencies": [d.model_dump(mode="json") for d in dependencies],
        }
        if asked.deploy:  # what it depends on first: a dependency it just installed, and the package
            result["deploy"] = []  # a list: a JSON object's key order is not kept (jsonb)
            for each in [*dependencies, row]:
                await ctx.progress(90, f"deploying {each.agent} {each.version}")
                out = await svc.lifecycle.run(
                    each.agent, Action.DEPLOY, actor=asked.actor, version=each.version
                )
                result["deploy"].append(out.as_dict())
                if out.state == State.FAILED:
                    raise OperationFailed(
                        f"{each.agent} {each.version} failed to deploy: {out.detail}", result
                    )
        return result

    return [OperationKind("hub.install", run, resumable=True)]

"""Agent configuration (``/api/v1/config/{agent}``; docs/config.md).

* ``GET  /api/v1/config/{agent}[?tenant=]`` -> the newest version of the agent's config
  (or of the tenant's override) and the config the tenant's runs read (merged)
* ``PUT  /api/v1/config/{agent}[?tenant=]`` ``{"config", "comment"}`` -> the new version
  (422 naming each refused field and why; nothing stored then)
* ``GET  /api/v1/config/{agent}/versions[?tenant=]`` -> the history, newest first
* ``GET  /api/v1/config/{agent}/diff?from=&to=[&tenant=]`` -> the paths added, removed, changed
* ``POST /api/v1/config/{agent}/rollback[?tenant=]`` ``{"to"}`` -> a new version equal to ``to``

A tenant's token reaches its own tenant's override only (``?tenant=`` defaults to
it; another tenant is 403) and reads the agent's config it is merged onto; the
agent's own config is written with a token of every tenant.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.configs import ConfigVersionNotFound, Written, config_diff, rollback, set_config
from agents.store.configs import list_versions, read_version
from agents.store.tenancy import tenant_scope
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.params import path_value, query_int, query_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh import names
from mesh.queue.agent_config import AgentConfig, ConfigOverride

__all__ = [
    "ConfigChange",
    "ConfigDiff",
    "ConfigRollback",
    "ConfigVersion",
    "ConfigVersions",
    "ConfigView",
    "ConfigWritten",
    "routes",
]

routes = web.RouteTableDef()

_TENANT: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_VERSION: Final = 2**31 - 1


class ConfigChange(BaseModel):
    """A new version: the agent's config (no ``?tenant=``) or a tenant's override."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(description="AgentConfig, or a ConfigOverride with ?tenant=")
    comment: str = Field(default="", max_length=500, description="why, for the history")


class ConfigRollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: int = Field(ge=1, le=_MAX_VERSION, description="the version whose config becomes current again")


class ConfigVersion(BaseModel):
    """One stored version."""

    agent: str
    tenant: str | None
    version: int
    config: dict[str, Any]
    author: str
    comment: str
    created_at: datetime


class ConfigQuery(BaseModel):
    tenant: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$",
        description="a tenant's override (a tenant's token: its own, the default)",
    )  # fmt: skip


class VersionsQuery(ConfigQuery):
    limit: int = Field(default=100, ge=0, le=1000)


class DiffQuery(ConfigQuery):
    from_: int = Field(alias="from", ge=0, le=_MAX_VERSION)
    to: int = Field(ge=0, le=_MAX_VERSION)


class ConfigView(BaseModel):
    """The newest version of a key, and what the tenant's runs read (the agent's config
    with the override on top; defaults for what was never set)."""

    agent: str
    tenant: str | None
    current: ConfigVersion | None
    base_version: int | None = Field(description="the agent's config version merged under the override")
    merged: AgentConfig


class ConfigWritten(BaseModel):
    version: ConfigVersion
    kv_revision: int | None = Field(description="af_config revision it was published at")


class ConfigVersions(BaseModel):
    versions: list[ConfigVersion]


class ConfigChangeEntry(BaseModel):
    path: str
    op: Literal["added", "removed", "changed"]
    before: Any = Field(default=None, alias="from")
    after: Any = Field(default=None, alias="to")


class ConfigDiff(BaseModel):
    agent: str
    tenant: str | None
    from_version: int
    to_version: int
    changes: list[ConfigChangeEntry]


def _target(request: web.Request) -> tuple[str, str | None, str | None]:
    """(agent, the override's tenant or None, the tenant the caller acts as or None)."""
    svc: Services = request.app[SERVICES]
    agent = path_value(request, "agent", names.AGENT_KEY_RE, "agent key")
    svc.registry.get(agent)  # AgentNotFound: 404
    tenant = query_value(request, "tenant", _TENANT, "tenant id (A-Z, a-z, 0-9, _ and -)")
    scope = principal(request).tenant
    if scope is not None:
        tenant = tenant or scope
        if tenant != scope:
            raise web.HTTPForbidden(text=f"a token of tenant {scope!r} cannot reach {tenant!r}'s config")
    return agent, tenant, scope


def _knobs(config: dict[str, Any]) -> dict[str, Any]:
    return ConfigOverride.model_validate(config).model_dump(
        mode="json", exclude_none=True, exclude={"values"}
    )


async def _values_only(request: web.Request, agent: str, tenant: str | None, scope: str | None,
                       new: dict[str, Any]) -> None:  # fmt: skip
    """403 unless a tenant's own token changes only its override's ``values``: the
    kill switch, limits, budget, mode and pinned version of a tenant are set by a
    token of every tenant (else a tenant could lift the limits put on it)."""
    if scope is None:
        return
    async with tenant_scope(request.app[SERVICES].pool, scope) as conn:
        current = await read_version(conn, agent, tenant)
    if _knobs(new) != _knobs(current["config"] if current else {}):
        raise web.HTTPForbidden(
            text=f"a token of tenant {scope!r} may change its override's values only; its kill switch, "
            "limits, budget, mode and pinned version need a token of every tenant"
        )


def _obeyed_here(svc: Services, written: Written) -> None:
    """This gateway's enqueues obey the new version from the next request on (every
    other process: when its write reaches it, milliseconds)."""
    if svc.queue.config is not None:
        svc.queue.config.note(written.record)


def _version(row: dict[str, Any]) -> ConfigVersion:
    return ConfigVersion.model_validate(row)


def _dump(model: BaseModel, status: int = 200) -> web.Response:
    return json_response(model.model_dump(mode="json", by_alias=True), status=status)


@routes.get("/api/v1/config/{agent}")
@endpoint("An agent's config, or a tenant's override, and what its runs read", query=ConfigQuery,
          response=ConfigView, errors=(403, 404), tags=("config",))  # fmt: skip
@tenant_scoped
async def get_config(request: web.Request) -> web.Response:
    agent, tenant, scope = _target(request)
    async with tenant_scope(request.app[SERVICES].pool, scope) as conn:
        base = await read_version(conn, agent, None)
        top = await read_version(conn, agent, tenant) if tenant is not None else base
    merged = AgentConfig.model_validate(base["config"]) if base else AgentConfig()
    if tenant is not None and top is not None:
        merged = merged.merged(ConfigOverride.model_validate(top["config"]))
    view = ConfigView(agent=agent, tenant=tenant, current=_version(top) if top else None,
                      base_version=base["version"] if base else None, merged=merged)  # fmt: skip
    return _dump(view)


@routes.put("/api/v1/config/{agent}")
@endpoint("Store a new config version (agent's, or ?tenant= override's)", query=ConfigQuery,
          body=ConfigChange, response=ConfigWritten, status=201, errors=(403, 404),
          tags=("config",))  # fmt: skip
@tenant_scoped
async def put_config(request: web.Request) -> web.Response:
    agent, tenant, scope = _target(request)
    body = ConfigChange.model_validate(await read_json(request))
    svc: Services = request.app[SERVICES]
    if scope is not None:
        ConfigOverride.model_validate(body.config)  # 422 as set_config would, before comparing
        await _values_only(request, agent, tenant, scope, body.config)
    written = await set_config(svc.pool, svc.js, svc.registry.get(agent), tenant, body.config, scope=scope,
                               author=principal(request).token_id, comment=body.comment)  # fmt: skip
    _obeyed_here(svc, written)
    return _dump(ConfigWritten(version=_version(written.row), kv_revision=written.revision), status=201)


@routes.get("/api/v1/config/{agent}/versions")
@endpoint("A config's versions, newest first", query=VersionsQuery, response=ConfigVersions,
          errors=(403, 404), tags=("config",))  # fmt: skip
@tenant_scoped
async def config_versions(request: web.Request) -> web.Response:
    agent, tenant, scope = _target(request)
    limit = query_int(request, "limit", 100, 1000)
    async with tenant_scope(request.app[SERVICES].pool, scope) as conn:
        rows = await list_versions(conn, agent, tenant, limit)
    return _dump(ConfigVersions(versions=[_version(r) for r in rows]))


@routes.get("/api/v1/config/{agent}/diff")
@endpoint("What changed between two versions of a config", query=DiffQuery, response=ConfigDiff,
          errors=(403, 404), tags=("config",))  # fmt: skip
@tenant_scoped
async def diff_config(request: web.Request) -> web.Response:
    agent, tenant, scope = _target(request)
    if "from" not in request.query or "to" not in request.query:
        raise web.HTTPBadRequest(text="give ?from=<version>&to=<version>")
    old, new = query_int(request, "from", 0, _MAX_VERSION), query_int(request, "to", 0, _MAX_VERSION)
    async with tenant_scope(request.app[SERVICES].pool, scope) as conn:
        rows = [await read_version(conn, agent, tenant, v) for v in (old, new)]
    for version, row in zip((old, new), rows, strict=True):
        if row is None:
            raise ConfigVersionNotFound(agent, tenant, version)
    changes = config_diff(rows[0]["config"] if rows[0] else {}, rows[1]["config"] if rows[1] else {})
    diff = ConfigDiff(agent=agent, tenant=tenant, from_version=old, to_version=new,
                      changes=[ConfigChangeEntry.model_validate(c) for c in changes])  # fmt: skip
    return _dump(diff)


@routes.post("/api/v1/config/{agent}/rollback")
@endpoint("Make an earlier version current again (as a new version)", query=ConfigQuery,
          body=ConfigRollback, response=ConfigWritten, status=201, errors=(403, 404),
          tags=("config",))  # fmt: skip
@tenant_scoped
async def rollback_config(request: web.Request) -> web.Response:
    agent, tenant, scope = _target(request)
    body = ConfigRollback.model_validate(await read_json(request))
    svc: Services = request.app[SERVICES]
    if scope is not None:
        async with tenant_scope(svc.pool, scope) as conn:
            target = await read_version(conn, agent, tenant, body.to)
        if target is None:
            raise ConfigVersionNotFound(agent, tenant, body.to)
        await _values_only(request, agent, tenant, scope, target["config"])
    written = await rollback(svc.pool, svc.js, svc.registry.get(agent), tenant, body.to, scope=scope,
                             author=principal(request).token_id)  # fmt: skip
    _obeyed_here(svc, written)
    return _dump(ConfigWritten(version=_version(written.row), kv_revision=written.revision), status=201)

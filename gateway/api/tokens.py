"""API tokens and tenants (``/api/v1/tokens``, ``/api/v1/tenants``).

* ``POST   /api/v1/tokens`` ``{"scope", "tenant", "name"}`` -> 201 with the secret,
  shown this once (admin; a tenant's admin makes tokens of its own tenant only)
* ``GET    /api/v1/tokens[?revoked=true]`` -> the tokens this admin may see
* ``DELETE /api/v1/tokens/{id}`` -> revoked (at once here, within
  :data:`~gateway.api.auth.CACHE_S` on every other gateway)
* ``POST   /api/v1/tenants`` ``{"id", "name"}`` -> 201, or 200 if it exists (admin of every tenant)
* ``GET    /api/v1/tenants``, ``GET /api/v1/tenants/{id}`` -> a tenant's token sees its own
* ``PATCH  /api/v1/tenants/{id}`` ``{"name", "enabled"}`` -> a disabled tenant's tokens stop working
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.store.tenancy import tenant_scope
from agents.store.tokens import (
    Scope,
    create_tenant,
    create_token,
    get_tenant,
    list_tenants,
    list_tokens,
    revoke_token,
    set_tenant,
)
from gateway.api.auth import TOKENS, admin_only, principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.params import PG_TEXT, path_value
from gateway.api.services import SERVICES
from gateway.api.spec import endpoint

__all__ = ["routes"]

routes = web.RouteTableDef()

TENANT_PATTERN: Final = r"^[A-Za-z0-9_-]{1,128}$"
_TENANT: Final = re.compile(TENANT_PATTERN[1:-1])
_TOKEN_ID: Final = re.compile(r"[a-z0-9_-]{1,64}")


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope = Field(
        description="reader: read; operator: also act; admin: also manage tokens and tenants"
    )
    tenant: str | None = Field(
        default=None, pattern=TENANT_PATTERN,
        description="The tenant it is bound to; none: every tenant (admin only), or the caller's own",
    )  # fmt: skip
    name: str = Field(default="", max_length=200, pattern=PG_TEXT, description="What it is for")


class TenantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TENANT_PATTERN)
    name: str = Field(default="", max_length=200, pattern=PG_TEXT)


class TenantChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200, pattern=PG_TEXT)
    enabled: bool | None = Field(default=None, description="false: its tokens stop working")


class TokenView(BaseModel):
    """A token as listed: never its secret (only its SHA-256 is stored)."""

    id: str
    name: str
    scope: Scope
    tenant: str | None = Field(description="the tenant it is bound to; null: every tenant")
    created_by: str = Field(description="the token that made it")
    created_at: datetime
    revoked_at: datetime | None


class TokenCreated(BaseModel):
    token: TokenView
    secret: str = Field(description="the bearer token: shown this once")


class TokenAnswer(BaseModel):
    token: TokenView


class TokenList(BaseModel):
    tokens: list[TokenView]


class RevokedQuery(BaseModel):
    revoked: bool = Field(default=False, description="also the revoked ones")


class TenantView(BaseModel):
    id: str
    name: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


class TenantAnswer(BaseModel):
    tenant: TenantView


class TenantCreated(TenantAnswer):
    created: bool = Field(description="false: it existed (200)")


class TenantList(BaseModel):
    tenants: list[TenantView]


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}


@routes.post("/api/v1/tokens")
@endpoint("Make a token (admin)", body=TokenRequest, response=TokenCreated, status=201, tags=("tokens",))
@admin_only
@tenant_scoped
async def create_token_view(request: web.Request) -> web.Response:
    who = principal(request)
    body = TokenRequest.model_validate(await read_json(request))
    tenant = body.tenant if who.tenant is None else (body.tenant or who.tenant)
    if who.tenant is not None and tenant != who.tenant:
        raise web.HTTPForbidden(text=f"a token of tenant {who.tenant!r} cannot make tokens for {tenant!r}")
    if tenant is None and body.scope is not Scope.ADMIN:
        raise web.HTTPUnprocessableEntity(
            text=f"a {body.scope} token needs a tenant; only admin tokens span all"
        )
    try:
        async with tenant_scope(request.app[SERVICES].pool, who.tenant) as conn:
            row, secret = await create_token(
                conn, scope=body.scope, tenant=tenant, name=body.name, created_by=who.token_id
            )
    except asyncpg.ForeignKeyViolationError:
        raise web.HTTPUnprocessableEntity(
            text=f"no tenant {tenant!r}: create it first (agent-factory tenant create {tenant})"
        ) from None
    response = json_response({"token": _shown(row), "secret": secret}, status=201)
    response.headers["Location"] = f"/api/v1/tokens/{row['id']}"
    return response


@routes.get("/api/v1/tokens")
@endpoint("The tokens this admin may see", query=RevokedQuery, response=TokenList, tags=("tokens",))
@admin_only
@tenant_scoped
async def list_tokens_view(request: web.Request) -> web.Response:
    revoked = request.query.get("revoked", "") in ("1", "true")
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        rows = await list_tokens(conn, revoked=revoked)
    return json_response({"tokens": [_shown(r) for r in rows]})


@routes.delete("/api/v1/tokens/{id}")
@endpoint("Revoke a token", path={"id": _TOKEN_ID}, response=TokenAnswer, errors=(404,), tags=("tokens",))
@admin_only
@tenant_scoped
async def revoke_token_view(request: web.Request) -> web.Response:
    token_id = path_value(request, "id", _TOKEN_ID, "token id")
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        row = await revoke_token(conn, token_id)
    request.app[TOKENS].forget(token_id)
    return json_response({"token": _shown(row)})


@routes.post("/api/v1/tenants")
@endpoint("Make a tenant (201), or find it (200)", body=TenantRequest, response=TenantCreated,
          status=(200, 201), tags=("tenants",))  # fmt: skip
@admin_only
async def create_tenant_view(request: web.Request) -> web.Response:
    body = TenantRequest.model_validate(await read_json(request))
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        row, new = await create_tenant(conn, body.id, body.name)
    response = json_response({"tenant": _shown(row), "created": new}, status=201 if new else 200)
    response.headers["Location"] = f"/api/v1/tenants/{body.id}"
    return response


@routes.get("/api/v1/tenants")
@endpoint("The tenants this token sees", response=TenantList, tags=("tenants",))
@tenant_scoped
async def list_tenants_view(request: web.Request) -> web.Response:
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        rows = await list_tenants(conn)
    return json_response({"tenants": [_shown(r) for r in rows]})


@routes.get("/api/v1/tenants/{id}")
@endpoint("One tenant", path={"id": _TENANT}, response=TenantAnswer, errors=(404,), tags=("tenants",))
@tenant_scoped
async def get_tenant_view(request: web.Request) -> web.Response:
    tenant = path_value(request, "id", _TENANT, "tenant id (A-Z, a-z, 0-9, _ and -)")
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        row = await get_tenant(conn, tenant)
    return json_response({"tenant": _shown(row)})


@routes.patch("/api/v1/tenants/{id}")
@endpoint("Rename, disable or enable a tenant", path={"id": _TENANT}, body=TenantChange,
          response=TenantAnswer, errors=(404,), tags=("tenants",))  # fmt: skip
@admin_only
async def change_tenant_view(request: web.Request) -> web.Response:
    tenant = path_value(request, "id", _TENANT, "tenant id (A-Z, a-z, 0-9, _ and -)")
    body = TenantChange.model_validate(await read_json(request))
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        row = await set_tenant(conn, tenant, name=body.name, enabled=body.enabled)
    if body.enabled is not None:
        request.app[TOKENS].forget()  # its tokens stop (or work again) here at once
    return json_response({"tenant": _shown(row)})

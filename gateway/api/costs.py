"""Costs, budgets and quotas (docs/processors.md).

* ``GET    /api/v1/costs?group_by=agent|tenant&period=hour|day|month[&since&until&agent&tenant]``
  -> cost per agent or tenant and period, from the billing records in PostgreSQL
* ``GET    /api/v1/budgets`` -> ``{"budgets": [...], "quotas": [...]}``, each with its spent mark
  (and a concurrency quota with ``running``: its scope's slots held now)
* ``PUT    /api/v1/budgets/{id}`` / ``PUT /api/v1/quotas/{id}`` -> create (201) or replace (200)
* ``GET    /api/v1/budgets/{id}`` / ``GET /api/v1/quotas/{id}``
* ``DELETE /api/v1/budgets/{id}`` / ``DELETE /api/v1/quotas/{id}`` -> 204, 404 if none
* ``GET    /api/v1/budgets/{id}/history`` / ``GET /api/v1/quotas/{id}/history`` -> every
  change made through the API, newest first, with who made it (PostgreSQL ``limit_changes``)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from nats.js import JetStreamContext
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agents.store.billing import cost_totals
from agents.store.limits import limit_history, record_limit_change
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response, read_json
from gateway.api.params import LIMIT_ID, query_int
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint
from mesh.queue.billing import NANO
from mesh.queue.budgets import Budget, Quota, Spent, put_limit, read_limits, remove_limit
from mesh.queue.slots import read_slots

__all__ = ["routes"]

routes = web.RouteTableDef()

_PARTS = ("compute", "tokens", "storage", "network")
_DEFAULT_SPAN = {"hour": timedelta(days=2), "day": timedelta(days=31), "month": timedelta(days=366)}


class CostQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group_by: Literal["agent", "tenant"] = "agent"
    period: Literal["hour", "day", "month"] = "day"
    since: datetime | None = None
    until: datetime | None = None
    agent: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")
    tenant: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,128}$")

    @model_validator(mode="after")
    def _span(self) -> Any:
        self.until = (self.until or datetime.now(UTC)).astimezone(UTC)
        self.since = (self.since or self.until - _DEFAULT_SPAN[self.period]).astimezone(UTC)
        if self.since >= self.until:
            raise ValueError("since must be before until")
        return self


class CostRow(BaseModel):
    """One agent's or tenant's cost in one period (the key named by ``group_by``)."""

    agent: str | None = None
    tenant: str | None = None
    start: datetime
    currency: str
    executions: int
    amount: float
    amount_nano: int
    breakdown: dict[Literal["compute", "tokens", "storage", "network"], float]
    input_tokens: int
    output_tokens: int
    cpu_s: float


class CostReport(BaseModel):
    group_by: Literal["agent", "tenant"]
    period: Literal["hour", "day", "month"]
    since: datetime
    until: datetime
    rows: list[CostRow]
    total: float
    total_nano: int
    executions: int


class BudgetView(Budget):
    spent: Spent | None = Field(description="set while it is used up for its current period")


class QuotaView(Quota):
    spent: Spent | None = Field(description="set while it is used up for its current period")
    running: int | None = Field(default=None, description="a concurrency quota: its scope's slots held now")


class Limits(BaseModel):
    budgets: list[BudgetView]
    quotas: list[QuotaView]


@routes.get("/api/v1/costs")
@endpoint("Cost per agent or tenant and period, from the billing records", query=CostQuery,
          response=CostReport, errors=(422,), tags=("costs",))  # fmt: skip
@tenant_scoped
async def costs(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    q = CostQuery.model_validate(dict(request.query))
    assert q.since is not None and q.until is not None
    async with tenant_scope(svc.pool, principal(request).tenant) as conn:  # a tenant's token: its own
        rows = await cost_totals(conn, q.group_by, q.period, q.since, q.until, q.agent, q.tenant)
    out = [
        {
            q.group_by: row["key"], "start": row["start"].replace(tzinfo=UTC).isoformat(),
            "currency": row["currency"], "executions": row["executions"],
            "amount": int(row["amount_nano"]) / NANO, "amount_nano": int(row["amount_nano"]),
            "breakdown": {part: int(row[f"{part}_nano"]) / NANO for part in _PARTS},
            "input_tokens": int(row["input_tokens"]), "output_tokens": int(row["output_tokens"]),
            "cpu_s": float(row["cpu_ms"]) / 1000,
        }
        for row in rows
    ]  # fmt: skip
    total = sum(r["amount_nano"] for r in out)
    return json_response({
        "group_by": q.group_by, "period": q.period, "since": q.since.isoformat(),
        "until": q.until.isoformat(), "rows": out, "total": total / NANO, "total_nano": total,
        "executions": sum(r["executions"] for r in out),
    })  # fmt: skip


def _ident(request: web.Request) -> str:
    ident = request.match_info["id"]
    if not LIMIT_ID.match(ident):
        raise web.HTTPBadRequest(
            text=f"{ident[:70]!r} is not a budget or quota id (a-z, 0-9 and -, up to 63)"
        )
    return ident


async def _shown(js: JetStreamContext, limit: Budget | Quota, spent: dict[str, Spent]) -> dict[str, Any]:
    mark = spent.get(limit.id)
    shown = {**limit.model_dump(mode="json", exclude_none=True),
             "spent": mark.model_dump(mode="json") if mark else None}  # fmt: skip
    if isinstance(limit, Quota) and limit.max_concurrent is not None:
        shown["running"] = len(await read_slots(js, limit.scope))  # its scope's slots held now
    return shown


async def _visible_limits(request: web.Request) -> tuple[list[Budget], list[Quota], dict[str, Spent]]:
    """The limits :func:`principal` sees: every one, or those of its tenant."""
    who = principal(request)
    budgets, quotas, spent = await read_limits(request.app[SERVICES].js)
    if who.tenant is not None:
        budgets = [b for b in budgets if b.tenant == who.tenant]
        quotas = [q for q in quotas if q.tenant == who.tenant]
    return budgets, quotas, spent


@routes.get("/api/v1/budgets")
@endpoint("Every budget and quota, each with its spent mark", response=Limits, tags=("budgets",))
@tenant_scoped
async def list_budgets(request: web.Request) -> web.Response:
    svc: Services = request.app[SERVICES]
    budgets, quotas, spent = await _visible_limits(request)
    return json_response({
        "budgets": [await _shown(svc.js, b, spent) for b in budgets],
        "quotas": [await _shown(svc.js, q, spent) for q in quotas],
    })  # fmt: skip


async def _put(request: web.Request, model: type[Budget] | type[Quota], base: str) -> web.Response:
    svc: Services = request.app[SERVICES]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    ident = _ident(request)
    if body.setdefault("id", ident) != ident:
        raise web.HTTPBadRequest(text=f"the body names {body['id']!r}, the path {ident!r}")
    limit = model.model_validate(body)
    kind: Literal["budget", "quota"] = "budget" if isinstance(limit, Budget) else "quota"
    async with tenant_scope(svc.pool, ALL_TENANTS) as conn:  # the record commits only after the KV write
        existed = await put_limit(svc.js, limit)
        await record_limit_change(conn, kind, ident, tenant=limit.tenant, agent=limit.agent,
                                  definition=limit.model_dump(mode="json", exclude_none=True),
                                  actor=principal(request).token_id)  # fmt: skip
    response = json_response(limit.model_dump(mode="json", exclude_none=True), status=200 if existed else 201)
    response.headers["Location"] = f"{base}/{ident}"
    return response


async def _get(request: web.Request, kind: str) -> web.Response:
    svc: Services = request.app[SERVICES]
    ident = _ident(request)
    budgets, quotas, spent = await _visible_limits(request)
    for limit in budgets if kind == "budget" else quotas:
        if limit.id == ident:
            return json_response(await _shown(svc.js, limit, spent))
    raise web.HTTPNotFound(text=f"no {kind} {ident!r}")


async def _delete(request: web.Request, kind: Literal["budget", "quota"]) -> web.Response:
    svc: Services = request.app[SERVICES]
    ident = _ident(request)
    budgets, quotas, _ = await read_limits(svc.js)
    scope = next((x for x in (budgets if kind == "budget" else quotas) if x.id == ident), None)
    async with tenant_scope(svc.pool, ALL_TENANTS) as conn:
        if not await remove_limit(svc.js, kind, ident):
            raise web.HTTPNotFound(text=f"no {kind} {ident!r}")
        await record_limit_change(
            conn, kind, ident, tenant=scope.tenant if scope else None, agent=scope.agent if scope else None,
            definition=None, actor=principal(request).token_id,
        )  # fmt: skip
    return web.Response(status=204)


class LimitChange(BaseModel):
    id: int
    kind: Literal["budget", "quota"]
    limit_id: str
    action: Literal["put", "remove"]
    tenant: str | None
    agent: str | None
    definition: dict[str, Any] | None = Field(description="what it was set to (null: removed)")
    actor: str = Field(description="the id of the token that made the change")
    at: datetime


class LimitHistory(BaseModel):
    changes: list[LimitChange]


async def _history(request: web.Request, kind: Literal["budget", "quota"]) -> web.Response:
    ident = _ident(request)
    async with tenant_scope(request.app[SERVICES].pool, principal(request).tenant) as conn:
        rows = await limit_history(conn, kind, ident, query_int(request, "limit", 100, 1000) or 1)
    if not rows:
        raise web.HTTPNotFound(text=f"no change of {kind} {ident!r} on record")
    return json_response(
        LimitHistory(changes=[LimitChange.model_validate(r) for r in rows]).model_dump(mode="json")
    )


@routes.put("/api/v1/budgets/{id}")
@endpoint("Create (201) or replace (200) a budget; the body's id may be left out", body=Budget,
          response=Budget, status=(200, 201), tags=("budgets",))  # fmt: skip
async def put_budget(request: web.Request) -> web.Response:
    return await _put(request, Budget, "/api/v1/budgets")


@routes.put("/api/v1/quotas/{id}")
@endpoint("Create (201) or replace (200) a quota; the body's id may be left out", body=Quota,
          response=Quota, status=(200, 201), tags=("budgets",))  # fmt: skip
async def put_quota(request: web.Request) -> web.Response:
    return await _put(request, Quota, "/api/v1/quotas")


@routes.get("/api/v1/budgets/{id}")
@endpoint("One budget, with its spent mark", response=BudgetView, errors=(404,), tags=("budgets",))
@tenant_scoped
async def get_budget(request: web.Request) -> web.Response:
    return await _get(request, "budget")


@routes.get("/api/v1/quotas/{id}")
@endpoint("One quota, with its spent mark", response=QuotaView, errors=(404,), tags=("budgets",))
@tenant_scoped
async def get_quota(request: web.Request) -> web.Response:
    return await _get(request, "quota")


@routes.delete("/api/v1/budgets/{id}")
@endpoint("Delete a budget", status=204, errors=(404,), tags=("budgets",))
async def delete_budget(request: web.Request) -> web.Response:
    return await _delete(request, "budget")


@routes.delete("/api/v1/quotas/{id}")
@endpoint("Delete a quota", status=204, errors=(404,), tags=("budgets",))
async def delete_quota(request: web.Request) -> web.Response:
    return await _delete(request, "quota")


@routes.get("/api/v1/budgets/{id}/history")
@endpoint("Every change of a budget, newest first: what, who, when", response=LimitHistory,
          errors=(404,), tags=("budgets",))  # fmt: skip
@tenant_scoped
async def budget_history(request: web.Request) -> web.Response:
    return await _history(request, "budget")


@routes.get("/api/v1/quotas/{id}/history")
@endpoint("Every change of a quota, newest first: what, who, when", response=LimitHistory,
          errors=(404,), tags=("budgets",))  # fmt: skip
@tenant_scoped
async def quota_history(request: web.Request) -> web.Response:
    return await _history(request, "quota")

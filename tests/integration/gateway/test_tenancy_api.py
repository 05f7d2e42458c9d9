"""Scoped tokens and tenant isolation through the API, on a pool of ONE connection
(every request reuses it, so a tenant setting that outlived its transaction would show
up in the next tenant's answers).

The crafted-id cases go around the handlers' own checks on purpose: rows written
straight into PostgreSQL (no KV record, as after its 24 h expiry) are found only by
the database lookup, which row security alone keeps to the token's tenant.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.helpers import unique
from tests.integration.gateway.conftest import PROBLEM, agent_factory, ok

DIESEL = {"fuel": "diesel", "quantity": 100, "unit": "L"}
pytestmark = pytest.mark.parametrize("api", [{"database_pool_size": 1}], indirect=True)


async def _token(api: TestClient[Any, Any], scope: str, tenant: str | None) -> dict[str, str]:
    body = {"scope": scope, "name": f"{scope} of {tenant}", **({"tenant": tenant} if tenant else {})}
    resp = await api.post("/api/v1/tokens", json=body)
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['secret']}"}


async def _tenants(api: TestClient[Any, Any]) -> tuple[str, str]:
    a, b = unique("ta"), unique("tb")
    for tenant in (a, b):
        assert (await api.post("/api/v1/tenants", json={"id": tenant})).status == 201
    return a, b


async def _record(pool: asyncpg.Pool, tenant: str) -> str:
    """An execution and its runs row for ``tenant``, written as the recorder would."""
    run_id = f"crafted-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    await pool.execute(
        """INSERT INTO executions (run_id, tenant, agent_key, status, enqueued_at, finished_at)
           VALUES ($1, $2, 'fuel-combustion', 'succeeded', $3, $3)""",
        run_id, tenant, now,
    )  # fmt: skip
    await pool.execute(
        """INSERT INTO runs (run_id, tenant, agent_key, status, enqueued_at, finished_at, revision)
           VALUES ($1, $2, 'fuel-combustion', 'succeeded', $3, $3, 1)""",
        run_id, tenant, now,
    )  # fmt: skip
    return run_id


async def _listed(api: TestClient[Any, Any], headers: dict[str, str], query: str = "") -> set[str]:
    resp = await api.get(f"/api/v1/runs?limit=1000{query}", headers=headers)
    assert resp.status == 200, await resp.text()
    return {r["run_id"] for r in (await resp.json())["runs"]}


async def test_a_tenant_cannot_read_list_cancel_or_cost_another_tenants_rows(
    api: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    a, b = await _tenants(api)
    as_a, as_b = await _token(api, "operator", a), await _token(api, "operator", b)
    ran_a = await api.post("/api/v1/agents/fuel-combustion/runs", json={"input": DIESEL}, headers=as_a)
    assert ran_a.status == 202, await ran_a.text()
    run_a = (await ran_a.json())["run_id"]
    ran_b = await api.post("/api/v1/agents/fuel-combustion/runs", json={"input": DIESEL}, headers=as_b)
    run_b = (await ran_b.json())["run_id"]
    old_a, old_b = await _record(pool, a), await _record(pool, b)
    now = datetime.now(UTC)
    for tenant in (a, b):  # one priced execution each
        await pool.execute(
            """INSERT INTO billing_records VALUES ($1, $1, 'fuel-combustion', $2, NULL, 'succeeded', $3,
                 'v1', 'USD', 1000, 1000, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, now())""",
            f"bill-{uuid.uuid4().hex[:8]}", tenant, now,
        )  # fmt: skip

    # The live record (KV) says whose a run is; a token of another tenant gets 404, as for none.
    async with asyncio.timeout(15):
        while (await api.get(f"/api/v1/runs/{run_a}", headers=as_a)).status != 200:
            await asyncio.sleep(0.05)
    for path in (f"/api/v1/runs/{run_b}", f"/api/v1/runs/{old_b}"):
        for method in ("GET", "DELETE"):
            resp = await api.request(method, path, headers=as_a)
            assert resp.status == 404 and resp.content_type == PROBLEM, (method, path, resp.status)
    assert (await api.get(f"/api/v1/runs/{old_a}", headers=as_a)).status == 200
    assert (await api.get(f"/api/v1/runs/{old_b}")).status == 200  # the admin sees every tenant

    # Listing: the index shows A's rows only, whatever the filter asks.
    async with asyncio.timeout(15):
        while not {run_a, old_a} <= await _listed(api, as_a):
            await asyncio.sleep(0.1)
    seen_by_a = await _listed(api, as_a)
    assert run_b not in seen_by_a and old_b not in seen_by_a
    assert await _listed(api, as_a, f"&tenant={b}") == set()
    assert {run_b, old_b} <= await _listed(api, as_b) and not {run_a, old_a} & await _listed(api, as_b)

    # Submitting for another tenant is refused, not rewritten.
    resp = await api.post(
        "/api/v1/agents/fuel-combustion/runs", json={"input": DIESEL, "tenant": b}, headers=as_a
    )
    assert resp.status == 403 and resp.content_type == PROBLEM
    batch = {"tasks": [{"agent": "fuel-combustion", "input": DIESEL, "tenant": b}]}
    assert (await api.post("/api/v1/queue/batch", json=batch, headers=as_a)).status == 403

    # Costs: A's own, even when it asks for B's or for everyone's.
    for query in ("", f"&tenant={b}"):
        resp = await api.get(f"/api/v1/costs?group_by=tenant{query}", headers=as_a)
        assert resp.status == 200
        assert {r["tenant"] for r in (await resp.json())["rows"]} <= {a}
    everyone = await (await api.get("/api/v1/costs?group_by=tenant")).json()
    assert {a, b} <= {r["tenant"] for r in everyone["rows"]}

    # B's run is still there, uncancelled by A's attempts.
    assert (await (await api.get(f"/api/v1/runs/{run_b}", headers=as_b)).json())["status"] != "cancelled"


async def test_one_pooled_connection_never_carries_a_tenant_into_the_next_request(
    api: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    a, b = await _tenants(api)
    headers = {a: await _token(api, "reader", a), b: await _token(api, "reader", b)}
    rows = {a: {await _record(pool, a) for _ in range(3)}, b: {await _record(pool, b) for _ in range(3)}}

    async def check(tenant: str) -> None:
        seen = await _listed(api, headers[tenant])
        other = b if tenant == a else a
        assert rows[tenant] <= seen and not rows[other] & seen, tenant

    await asyncio.gather(*(check(a if i % 2 else b) for i in range(40)))  # interleaved on one connection


async def test_scopes_reader_reads_operator_acts_admin_manages(api: TestClient[Any, Any]) -> None:
    a, _ = await _tenants(api)
    reader, operator = await _token(api, "reader", a), await _token(api, "operator", a)
    run = {"input": DIESEL}
    assert (await api.get("/api/v1/runs", headers=reader)).status == 200
    refused = await api.post("/api/v1/agents/fuel-combustion/runs", json=run, headers=reader)
    assert refused.status == 403 and refused.content_type == PROBLEM
    assert "needs operator" in (await refused.json())["detail"]
    assert (await api.post("/api/v1/agents/fuel-combustion/runs", json=run, headers=operator)).status == 202
    # Tokens and tenants are an admin's; fleet-wide routes need a token of every tenant.
    assert (await api.get("/api/v1/tokens", headers=operator)).status == 403
    assert (await api.post("/api/v1/tenants", json={"id": unique("x")}, headers=operator)).status == 403
    for method, path in (("GET", "/api/v1/queue/stats"), ("GET", "/api/v1/queue/dlq"),
                         ("POST", "/api/v1/queue/dlq/purge"), ("GET", "/api/v1/breakers")):  # fmt: skip
        resp = await api.request(method, path, headers=operator)
        assert resp.status == 403 and "acts on every tenant" in (await resp.json())["detail"], path
    assert (await api.get("/api/v1/agents", headers=reader)).status == 200  # the catalog is no tenant's


async def test_a_tenants_admin_manages_its_own_tokens_only(api: TestClient[Any, Any]) -> None:
    a, b = await _tenants(api)
    admin_a = await _token(api, "admin", a)
    made = await api.post("/api/v1/tokens", json={"scope": "reader"}, headers=admin_a)
    assert made.status == 201 and (await made.json())["token"]["tenant"] == a
    other = await api.post("/api/v1/tokens", json={"scope": "reader", "tenant": b}, headers=admin_a)
    assert other.status == 403
    b_token = await api.post("/api/v1/tokens", json={"scope": "reader", "tenant": b})
    b_id = (await b_token.json())["token"]["id"]
    listed = {t["id"] for t in (await (await api.get("/api/v1/tokens", headers=admin_a)).json())["tokens"]}
    assert b_id not in listed and (await made.json())["token"]["id"] in listed
    assert (await api.delete(f"/api/v1/tokens/{b_id}", headers=admin_a)).status == 404  # RLS: not there
    assert (await api.get("/api/v1/tenants", headers=admin_a)).status == 200
    tenants = (await (await api.get("/api/v1/tenants", headers=admin_a)).json())["tenants"]
    assert [t["id"] for t in tenants] == [a]
    assert (await api.get(f"/api/v1/tenants/{b}", headers=admin_a)).status == 404


async def test_revoked_tokens_and_disabled_tenants_stop_at_once(api: TestClient[Any, Any]) -> None:
    a, b = await _tenants(api)
    made = await (await api.post("/api/v1/tokens", json={"scope": "reader", "tenant": a})).json()
    as_a = {"Authorization": f"Bearer {made['secret']}"}
    as_b = await _token(api, "reader", b)
    assert (await api.get("/api/v1/runs", headers=as_a)).status == 200  # now cached as good
    assert (await api.delete(f"/api/v1/tokens/{made['token']['id']}")).status == 200
    assert (await api.get("/api/v1/runs", headers=as_a)).status == 401
    assert (await api.get("/api/v1/runs", headers=as_b)).status == 200
    assert (await api.patch(f"/api/v1/tenants/{b}", json={"enabled": False})).status == 200
    assert (await api.get("/api/v1/runs", headers=as_b)).status == 401
    assert (await api.patch(f"/api/v1/tenants/{b}", json={"enabled": True})).status == 200
    assert (await api.get("/api/v1/runs", headers=as_b)).status == 200


async def test_token_requests_are_validated(api: TestClient[Any, Any]) -> None:
    for body, status in (
        ({"scope": "reader"}, 422),  # a reader of every tenant: only admins span all
        ({"scope": "god", "tenant": "default"}, 422),
        ({"scope": "reader", "tenant": "no-such-tenant-x"}, 422),
        ({"scope": "reader", "tenant": "bad tenant"}, 422),
        ({"scope": "reader", "tenant": "default", "extra": 1}, 422),
    ):
        resp = await api.post("/api/v1/tokens", json=body)
        assert resp.status == status and resp.content_type == PROBLEM, (body, await resp.text())
    assert (await api.delete("/api/v1/tokens/nosuchtoken")).status == 404


async def test_tokens_and_tenants_through_the_cli(api: TestClient[Any, Any]) -> None:
    tenant = unique("cli")
    ok(await agent_factory(api, "tenant", "create", tenant, "--name", "CLI tenant"))
    out = ok(
        await agent_factory(api, "token", "create", "--scope", "reader", "--tenant", tenant, "-o", "json")
    )
    made = json.loads(out)
    secret, token_id = made["secret"], made["token"]["id"]
    assert secret.startswith(f"af_{token_id}_")
    assert tenant in ok(await agent_factory(api, "tenant", "ls", token=secret))
    refused = await agent_factory(api, "tenant", "create", unique("y"), token=secret)
    assert refused.exit_code == 1 and "403" in refused.output
    assert token_id in ok(await agent_factory(api, "token", "ls"))
    ok(await agent_factory(api, "token", "revoke", token_id))
    denied = await agent_factory(api, "runs", "ls", token=secret)
    assert denied.exit_code == 1 and "401" in denied.output
    ok(await agent_factory(api, "tenant", "disable", tenant))
    listed = json.loads(ok(await agent_factory(api, "tenant", "ls", "-o", "json")))["tenants"]
    assert [t["enabled"] for t in listed if t["id"] == tenant] == [False]


async def test_the_cli_submits_as_its_tokens_tenant_unless_told_otherwise(api: TestClient[Any, Any]) -> None:
    tenant, _ = await _tenants(api)
    made = await (await api.post("/api/v1/tokens", json={"scope": "operator", "tenant": tenant})).json()
    diesel = json.dumps(DIESEL)
    out = ok(await agent_factory(api, "run", "fuel-combustion", "--input", diesel, "-o", "json",
                                 token=made["secret"]))  # fmt: skip
    run = await (await api.get(f"/api/v1/runs/{json.loads(out)['run_id']}")).json()
    assert run["tenant"] == tenant
    other = await agent_factory(api, "run", "fuel-combustion", "--input", diesel, "--tenant", "default",
                                token=made["secret"])  # fmt: skip
    assert other.exit_code == 1 and "403" in other.output
    admins = json.loads(
        ok(await agent_factory(api, "run", "fuel-combustion", "--input", diesel, "-o", "json"))
    )
    assert (await (await api.get(f"/api/v1/runs/{admins['run_id']}")).json())["tenant"] == "default"

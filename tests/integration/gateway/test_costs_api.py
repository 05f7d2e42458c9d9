"""Costs and budgets through the API and the CLI, end to end: real runs by the
gateway's worker, priced by the metering processor, recorded in PostgreSQL by
the billing recorder; a spent hard budget answers 402 problem+json."""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from mesh import names
from mesh.queue.billing import NANO
from streams.processors.app import ProcessorConfig, build, prepare
from streams.processors.executions import read_finished
from streams.processors.pricing import DEFAULT_PRICES, price
from tests.helpers import eventually
from tests.integration.gateway.conftest import PROBLEM, agent_factory, ok
from tests.integration.streams.streams_workers import running


async def _finished_costs(js: JetStreamContext, run_ids: list[str]) -> int:
    total = 0
    for run_id in run_ids:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject("noop", run_id))
        finished = read_finished(raw.data)
        assert finished is not None
        total += price(finished.payload, DEFAULT_PRICES, len(raw.data)).total
    return total


async def _costs(api: TestClient[Any, Any], tenant: str) -> dict[str, Any]:
    async with api.get(f"/api/v1/costs?group_by=tenant&period=day&tenant={tenant}") as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def test_runs_are_priced_into_costs_and_a_spent_budget_refuses_with_402(
    api: TestClient[Any, Any], mesh_js: JetStreamContext, nats_url: str
) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    app = build("metering", ProcessorConfig(nats_url, await prepare(nats_url, name="metering"),
                                            session_timeout_s=4, heartbeat_s=0.5,
                                            options={"flush_interval_s": 0.2}))  # fmt: skip
    async with running(app):
        run_ids = []
        for i in range(6):
            async with api.post(
                "/api/v1/agents/noop/runs", json={"input": {"echo": i}, "tenant": tenant}
            ) as resp:
                assert resp.status == 202, await resp.text()
                run_ids.append((await resp.json())["run_id"])
        data = await eventually(lambda: _costs_when(api, tenant, 6), 60, "6 runs priced and recorded")
        want = await _finished_costs(mesh_js, run_ids)
        assert data["total_nano"] == want and data["executions"] == 6
        assert [row["tenant"] for row in data["rows"]] == [tenant]
        assert data["rows"][0]["currency"] == DEFAULT_PRICES.currency

        shown = json.loads(ok(await agent_factory(api, "costs", "--group-by", "tenant", "--tenant", tenant,
                                                  "-o", "json")))  # fmt: skip
        assert shown["total_nano"] == want

        # A hard budget below what was spent: the next run is refused, naming the budget.
        limit = want / NANO / 2
        ok(await agent_factory(api, "budget", "set", f"b-{tenant.lower()}", "--tenant", tenant, "--limit",
                               repr(limit), "--period", "day", "--hard"))  # fmt: skip
        listed = ok(await agent_factory(api, "budget", "ls"))
        assert f"b-{tenant.lower()}" in listed
        refused = await eventually(lambda: _refused(api, tenant), 30, "402 once the budget is spent")
        assert refused["status"] == 402 and refused["budget"] == f"b-{tenant.lower()}"
        assert refused["spend"] * NANO >= want - 1 and refused["limit"] == limit
        assert refused["reset_at"] and refused["period"]
        ok(await agent_factory(api, "budget", "rm", f"b-{tenant.lower()}"))
        await eventually(lambda: _accepted(api, tenant), 30, "accepted again once the budget is removed")


async def test_budget_and_quota_bodies_are_validated_and_unknown_ones_are_404(
    api: TestClient[Any, Any],
) -> None:
    async with api.put("/api/v1/budgets/b1", json={"limit": -1, "tenant": "x"}) as resp:
        assert resp.status == 422 and resp.content_type == PROBLEM
    async with api.put("/api/v1/budgets/b1", json={"limit": 1}) as resp:  # no scope
        assert resp.status == 422
    async with api.put("/api/v1/budgets/b1", json={"id": "b2", "limit": 1, "tenant": "x"}) as resp:
        assert resp.status == 400
    async with api.put("/api/v1/quotas/q1", json={"max_daily": 0, "agent": "noop"}) as resp:
        assert resp.status == 422
    async with api.put("/api/v1/quotas/q1", json={"agent": "noop"}) as resp:  # no limit at all
        assert resp.status == 422 and "max_daily, max_concurrent or both" in await resp.text()
    async with api.put("/api/v1/quotas/q1", json={"max_concurrent": 10_001, "agent": "noop"}) as resp:
        assert resp.status == 422
    async with api.delete("/api/v1/budgets/nope") as resp:
        assert resp.status == 404 and resp.content_type == PROBLEM
    async with api.get("/api/v1/costs?group_by=planet") as resp:
        assert resp.status == 422
    async with api.get("/api/v1/costs?since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z") as resp:
        assert resp.status == 422


async def _costs_when(api: TestClient[Any, Any], tenant: str, n: int) -> dict[str, Any] | None:
    data = await _costs(api, tenant)
    return data if data["executions"] >= n else None


async def _refused(api: TestClient[Any, Any], tenant: str) -> dict[str, Any] | None:
    async with api.post("/api/v1/agents/noop/runs", json={"input": {"echo": 0}, "tenant": tenant}) as resp:
        if resp.status == 202:
            return None
        assert resp.content_type == PROBLEM
        return dict(await resp.json())


async def _accepted(api: TestClient[Any, Any], tenant: str) -> bool:
    async with api.post("/api/v1/agents/noop/runs", json={"input": {"echo": 0}, "tenant": tenant}) as resp:
        return resp.status == 202


async def test_quotas_through_the_cli(api: TestClient[Any, Any]) -> None:
    ident = f"q-{uuid.uuid4().hex[:8]}"
    made = await agent_factory(api, "quota", "set", ident, "--agent", "noop", "--max-daily", "5", "-ojson")
    assert json.loads(ok(made)) == {"id": ident, "agent": "noop", "max_daily": 5}
    listed = ok(await agent_factory(api, "quota", "ls"))
    assert ident in listed and "5 per day" in listed
    both = await agent_factory(
        api, "quota", "set", ident, "--tenant", "acme", "--max-daily", "5", "--max-concurrent", "3", "-ojson"
    )
    assert json.loads(ok(both)) == {"id": ident, "tenant": "acme", "max_daily": 5, "max_concurrent": 3}
    shown = [q for q in json.loads(ok(await agent_factory(api, "quota", "ls", "-ojson"))) if q["id"] == ident]
    assert shown[0]["running"] == 0  # its scope's slots held now
    assert "5 per day, 3 at once (0 running)" in ok(await agent_factory(api, "quota", "ls"))
    neither = await agent_factory(api, "quota", "set", ident, "--agent", "noop")
    assert neither.exit_code == 1 and "give --max-daily, --max-concurrent or both" in neither.output
    assert ok(await agent_factory(api, "quota", "rm", ident)).strip() == f"removed quota {ident}"
    gone = await agent_factory(api, "quota", "rm", ident)
    assert gone.exit_code == 1 and f"no quota {ident!r}" in gone.output
    refused = await agent_factory(api, "quota", "set", ident, "--max-daily", "5")
    assert refused.exit_code == 1 and "give --agent, --tenant or both" in refused.output


async def test_every_budget_change_is_on_record_with_who_and_a_tenant_sees_its_own(
    api: TestClient[Any, Any],
) -> None:
    tenant, other = f"rec-{uuid.uuid4().hex[:6]}", f"oth-{uuid.uuid4().hex[:6]}"
    ident, theirs = f"b-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    for t in (tenant, other):
        assert (await api.post("/api/v1/tenants", json={"id": t})).status == 201
    assert (await api.put(f"/api/v1/budgets/{ident}", json={"limit": 5, "tenant": tenant})).status == 201
    assert (await api.put(f"/api/v1/budgets/{ident}", json={"limit": 9, "tenant": tenant})).status == 200
    assert (await api.delete(f"/api/v1/budgets/{ident}")).status == 204
    assert (await api.put(f"/api/v1/budgets/{theirs}", json={"limit": 1, "tenant": other})).status == 201
    failed = await api.put(f"/api/v1/budgets/{ident}", json={"limit": -1, "tenant": tenant})
    assert failed.status == 422  # refused: nothing on record

    changes = (await (await api.get(f"/api/v1/budgets/{ident}/history")).json())["changes"]
    assert [(c["action"], (c["definition"] or {}).get("limit")) for c in changes] == [
        ("remove", None), ("put", 9.0), ("put", 5.0)
    ]  # fmt: skip
    assert {c["actor"] for c in changes} == {"settings"} and {c["tenant"] for c in changes} == {tenant}

    made = await (await api.post("/api/v1/tokens", json={"scope": "reader", "tenant": tenant})).json()
    as_tenant = {"Authorization": f"Bearer {made['secret']}"}
    assert (await api.get(f"/api/v1/budgets/{ident}/history", headers=as_tenant)).status == 200
    hidden = await api.get(f"/api/v1/budgets/{theirs}/history", headers=as_tenant)
    assert hidden.status == 404 and hidden.content_type == PROBLEM  # row security: not there
    assert (await api.get("/api/v1/quotas/never-set/history")).status == 404

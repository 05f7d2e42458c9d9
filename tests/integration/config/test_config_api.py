"""Agent configuration through the API and the CLI, on the real servers: refused when
invalid (field and reason, nothing stored), versioned in PostgreSQL with diff and
rollback, published to KV, read by the next run, the kill switch refusing enqueue,
and each tenant's override kept to that tenant."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.configs import reconcile
from agents.store.configs import insert_version, latest_versions
from agents.store.tenancy import app_pool, tenant_scope
from mesh import names
from mesh.queue.agent_config import ConfigRecord
from mesh.queue.producer import TaskQueue, TaskSpec
from tests.helpers import eventually, unique
from tests.integration.gateway.conftest import PROBLEM, agent_factory, ok


async def _put(api: TestClient[Any, Any], agent: str, config: dict[str, Any], tenant: str | None = None,
               headers: dict[str, str] | None = None, comment: str = "") -> Any:  # fmt: skip
    query = f"?tenant={tenant}" if tenant else ""
    return await api.put(f"/api/v1/config/{agent}{query}", json={"config": config, "comment": comment},
                         headers=headers)  # fmt: skip


async def _kv_record(js: JetStreamContext, agent: str, tenant: str | None = None) -> ConfigRecord:
    kv = await js.key_value(names.BUCKET_CONFIG)
    return ConfigRecord.model_validate_json((await kv.get(names.config_key(agent, tenant))).value or b"")


async def _run(api: TestClient[Any, Any], agent: str, value: float, tenant: str = "default") -> Any:
    resp = await api.post(f"/api/v1/agents/{agent}/runs", json={"input": {"value": value}, "tenant": tenant})
    assert resp.status == 202, await resp.text()
    run_id = (await resp.json())["run_id"]

    async def finished() -> Any:
        view = await (await api.get(f"/api/v1/runs/{run_id}")).json()
        return view if view["status"] in ("succeeded", "failed", "dead_lettered") else None

    return await eventually(finished, 10, f"run {run_id} finished")


async def test_invalid_config_is_refused_with_field_and_reason_and_nothing_is_stored(
    config_api: TestClient[Any, Any], agent_key: str
) -> None:
    cases = [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"mode": "cluster"}, "mode"),
        ({"enabled": "maybe"}, "enabled"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"values": {"factor": -2}}, "values.factor"),  # the agent's own Config model
        ({"values": {"limits": {"a": "many"}}}, "values.limits.a"),
    ]
    for config, field in cases:
        resp = await _put(config_api, agent_key, config)
        assert resp.status == 422, (config, await resp.text())
        assert resp.content_type == PROBLEM
        problem = await resp.json()
        assert [e["field"] for e in problem["errors"]] == [field], problem
        assert problem["errors"][0]["reason"], problem
        assert field in problem["detail"]
    tenant_override = await _put(config_api, agent_key, {"values": {"factor": "x"}}, tenant="acme")
    assert tenant_override.status == 422
    versions = await (await config_api.get(f"/api/v1/config/{agent_key}/versions")).json()
    assert versions == {"versions": []}


async def test_history_diff_and_rollback_and_kv_follows(
    config_api: TestClient[Any, Any], agent_key: str, mesh_js: JetStreamContext
) -> None:
    one = {"values": {"factor": 2.0, "label": "first", "limits": {"a": 1, "b": 2}}, "max_daily": 100}
    two = {"values": {"factor": 3.0, "limits": {"a": 1, "c": 3}}, "enabled": True}
    assert (await _put(config_api, agent_key, one, comment="first")).status == 201
    resp = await _put(config_api, agent_key, two, comment="second")
    assert resp.status == 201
    written = await resp.json()
    assert written["version"]["version"] == 2 and written["kv_revision"] > 0
    assert (await _kv_record(mesh_js, agent_key)).version == 2

    listed = await (await config_api.get(f"/api/v1/config/{agent_key}/versions")).json()
    assert [(v["version"], v["comment"]) for v in listed["versions"]] == [(2, "second"), (1, "first")]
    assert listed["versions"][0]["author"] == "settings"  # the token's id

    diff = await (await config_api.get(f"/api/v1/config/{agent_key}/diff?from=1&to=2")).json()
    changes = {c["path"]: c for c in diff["changes"]}
    assert changes["values.factor"] == {"path": "values.factor", "op": "changed", "from": 2.0, "to": 3.0}
    assert changes["values.label"] == {"path": "values.label", "op": "removed", "from": "first", "to": None}
    assert changes["values.limits.b"] == {"path": "values.limits.b", "op": "removed", "from": 2, "to": None}
    assert changes["values.limits.c"] == {"path": "values.limits.c", "op": "added", "from": None, "to": 3}
    assert changes["max_daily"]["op"] == "changed" and "values.limits.a" not in changes

    resp = await config_api.post(f"/api/v1/config/{agent_key}/rollback", json={"to": 1})
    assert resp.status == 201, await resp.text()
    three = (await resp.json())["version"]
    assert three["version"] == 3 and three["comment"] == "rollback to version 1"
    again = await (await config_api.get(f"/api/v1/config/{agent_key}/diff?from=1&to=3")).json()
    assert again["changes"] == []
    record = await _kv_record(mesh_js, agent_key)
    assert record.version == 3 and record.config["values"]["factor"] == 2.0

    missing = await config_api.post(f"/api/v1/config/{agent_key}/rollback", json={"to": 99})
    assert missing.status == 404
    assert (await config_api.get(f"/api/v1/config/{agent_key}/diff?from=1&to=99")).status == 404
    assert (await config_api.get("/api/v1/config/no-such-agent")).status == 404


async def test_the_next_run_reads_the_new_config_and_a_tenant_its_override(
    config_api: TestClient[Any, Any], agent_key: str
) -> None:
    assert (await _run(config_api, agent_key, 2.0))["result"]["factor"] == 1.0  # nothing set: defaults
    assert (await _put(config_api, agent_key, {"values": {"factor": 3.0, "label": "base"}})).status == 201
    result = (await _run(config_api, agent_key, 2.0))["result"]
    assert result == {"value": 6.0, "factor": 3.0, "label": "base"}
    # acme's override: its values deep-merged on top; other tenants keep the agent's
    assert (await _put(config_api, agent_key, {"values": {"factor": 10.0}}, tenant="acme")).status == 201
    assert (await _run(config_api, agent_key, 2.0, "acme"))["result"] == {
        "value": 20.0, "factor": 10.0, "label": "base"
    }  # fmt: skip
    assert (await _run(config_api, agent_key, 2.0, "globex"))["result"]["factor"] == 3.0
    view = await (await config_api.get(f"/api/v1/config/{agent_key}?tenant=acme")).json()
    assert view["current"]["config"] == {"values": {"factor": 10.0}}  # the override as stored
    assert view["merged"]["values"] == {"factor": 10.0, "label": "base"}  # as stored, before the model
    assert view["base_version"] == 1


async def test_the_kill_switch_refuses_enqueue_for_the_agent_or_one_tenant(
    config_api: TestClient[Any, Any], agent_key: str
) -> None:
    assert (await _put(config_api, agent_key, {"enabled": False}, tenant="acme")).status == 201
    refused = await config_api.post(f"/api/v1/agents/{agent_key}/runs",
                                    json={"input": {"value": 1}, "tenant": "acme"})  # fmt: skip
    assert refused.status == 409 and refused.content_type == PROBLEM
    problem = await refused.json()
    assert "kill switch" in problem["detail"] and problem["kill_switch"] == "tenant"
    assert (await _run(config_api, agent_key, 1.0, "globex"))["status"] == "succeeded"

    assert (await _put(config_api, agent_key, {"enabled": False})).status == 201
    refused = await config_api.post(f"/api/v1/agents/{agent_key}/runs", json={"input": {"value": 1}})
    assert refused.status == 409 and (await refused.json())["kill_switch"] == "agent"
    batch = await config_api.post("/api/v1/queue/batch",
                                  json={"tasks": [{"agent": agent_key, "input": {"value": 1}}]})  # fmt: skip
    assert batch.status == 409, await batch.text()

    assert (await _put(config_api, agent_key, {"enabled": True})).status == 201
    assert (await _run(config_api, agent_key, 1.0))["status"] == "succeeded"


async def test_quota_and_budget_knobs_become_the_scopes_limits(
    config_api: TestClient[Any, Any], agent_key: str
) -> None:
    config = {"max_concurrent": 2, "max_daily": 50, "budget": {"limit": 12.5, "period": "day"}}
    assert (await _put(config_api, agent_key, config)).status == 201
    assert (await _put(config_api, agent_key, {"max_daily": 5}, tenant="acme")).status == 201
    limits = await (await config_api.get("/api/v1/budgets")).json()
    quotas = {(q.get("agent"), q.get("tenant")): q for q in limits["quotas"]}
    assert quotas[(agent_key, None)]["max_concurrent"] == 2 and quotas[(agent_key, None)]["max_daily"] == 50
    assert quotas[(agent_key, "acme")]["max_daily"] == 5
    budgets = await (await config_api.get("/api/v1/budgets")).json()
    mine = [b for b in budgets["budgets"] if b.get("agent") == agent_key]
    assert [(b["limit"], b["period"], b["hard"]) for b in mine] == [(12.5, "day", True)]
    assert (await _put(config_api, agent_key, {})).status == 201  # knobs unset: the limits go
    limits = await (await config_api.get("/api/v1/budgets")).json()
    assert (agent_key, None) not in {(q.get("agent"), q.get("tenant")) for q in limits["quotas"]}


async def _token(api: TestClient[Any, Any], scope: str, tenant: str) -> dict[str, str]:
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status in (200, 201)
    resp = await api.post("/api/v1/tokens", json={"scope": scope, "tenant": tenant})
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['secret']}"}


async def test_a_tenant_reaches_its_own_override_only(
    config_api: TestClient[Any, Any], agent_key: str, database_url: str
) -> None:
    acme, globex = unique("acme"), unique("globex")
    acme_op = await _token(config_api, "operator", acme)
    acme_reader = await _token(config_api, "reader", acme)
    assert (await _put(config_api, agent_key, {"values": {"label": "base"}})).status == 201
    assert (await _put(config_api, agent_key, {"values": {"label": "globex"}}, tenant=globex)).status == 201

    # its own override: written and read without naming it (its token says whose)
    assert (await _put(config_api, agent_key, {"values": {"factor": 4.0}}, headers=acme_op)).status == 201
    view = await (await config_api.get(f"/api/v1/config/{agent_key}", headers=acme_reader)).json()
    assert view["tenant"] == acme and view["merged"]["values"]["label"] == "base"  # reads the base it merges
    assert view["merged"]["values"]["factor"] == 4.0
    # another tenant's: refused, reading or writing
    for method, path in (("GET", ""), ("GET", "/versions"), ("GET", "/diff?from=1&to=1")):
        sep = "&" if "?" in path else "?"
        resp = await config_api.request(method, f"/api/v1/config/{agent_key}{path}{sep}tenant={globex}",
                                        headers=acme_reader)  # fmt: skip
        assert resp.status == 403, (path, await resp.text())
    assert (await _put(config_api, agent_key, {}, tenant=globex, headers=acme_op)).status == 403
    # a reader cannot write
    assert (await _put(config_api, agent_key, {}, headers=acme_reader)).status == 403
    # nor lift what the fleet's operator put on it: knobs need a token of every tenant
    assert (await _put(config_api, agent_key, {"values": {"factor": 4.0}, "max_concurrent": 2},
                       tenant=acme)).status == 201  # fmt: skip
    for knobs in ({"max_concurrent": 1000}, {"enabled": False}, {}):
        resp = await _put(config_api, agent_key, {"values": {"factor": 5.0}, **knobs}, headers=acme_op)
        assert resp.status == 403 and "values only" in (await resp.json())["detail"], knobs
    kept = {"values": {"factor": 5.0}, "max_concurrent": 2}
    assert (await _put(config_api, agent_key, kept, headers=acme_op)).status == 201
    rolled = await config_api.post(f"/api/v1/config/{agent_key}/rollback", json={"to": 1}, headers=acme_op)
    assert rolled.status == 403  # version 1 had no limit: rolling back to it would lift it

    # the database itself: acme's transaction sees its rows and the agent's, never globex's,
    # and cannot write the agent's own config or another tenant's
    app_db = await app_pool(database_url, size=1)
    try:
        async with tenant_scope(app_db, acme) as conn:
            seen = {(r["agent"], r["tenant"]) for r in await latest_versions(conn) if r["agent"] == agent_key}
        assert seen == {(agent_key, None), (agent_key, acme)}
        for tenant in (None, globex):
            try:
                async with tenant_scope(app_db, acme) as conn:
                    await insert_version(conn, agent_key, tenant, {}, "crafted", "")
            except asyncpg.InsufficientPrivilegeError:
                pass
            else:
                raise AssertionError(f"{acme} wrote the config of {tenant or 'the agent'}")
        async with tenant_scope(app_db, acme) as conn:
            update = "UPDATE config_versions SET comment = 'x' WHERE agent = $1"
            changed = await conn.execute(update, agent_key)
    except asyncpg.InsufficientPrivilegeError:
        changed = "refused"
    finally:
        await app_db.close()
    assert changed == "refused"  # history is append-only for the application


async def test_reconcile_puts_what_kv_missed_after_a_crash_between_the_writes(
    config_api: TestClient[Any, Any], agent_key: str, pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    assert (await _put(config_api, agent_key, {"values": {"factor": 2.0}})).status == 201
    # version 2 committed, then the writer died before its KV put
    async with tenant_scope(pool, "*") as conn:
        await insert_version(conn, agent_key, None, {"values": {"factor": 5.0}}, "crashed", "")
    assert (await _kv_record(mesh_js, agent_key)).version == 1
    assert await reconcile(pool, mesh_js) >= 1
    record = await _kv_record(mesh_js, agent_key)
    assert record.version == 2 and record.config["values"]["factor"] == 5.0
    assert (await _run(config_api, agent_key, 1.0))["result"]["factor"] == 5.0
    assert await reconcile(pool, mesh_js) == 0 or (await _kv_record(mesh_js, agent_key)).version == 2


async def test_config_commands(config_api: TestClient[Any, Any], agent_key: str) -> None:
    out = ok(await agent_factory(config_api, "config", "set", agent_key, "--values", '{"factor": 2}',
                                 "-m", "two"))  # fmt: skip
    assert "version" in out and "two" in out
    ok(await agent_factory(config_api, "config", "set", agent_key, "--max-daily", "7", "--disable"))
    shown = json.loads(ok(await agent_factory(config_api, "config", "get", agent_key, "-o", "json")))
    assert shown["current"]["version"] == 2
    assert shown["merged"]["enabled"] is False and shown["merged"]["values"]["factor"] == 2
    diff = ok(await agent_factory(config_api, "config", "diff", agent_key, "1", "2"))
    assert "enabled: true -> false" in diff
    ok(await agent_factory(config_api, "config", "rollback", agent_key, "--to", "1"))
    listed = ok(await agent_factory(config_api, "config", "versions", agent_key))
    assert "rollback to version 1" in listed
    bad = await agent_factory(config_api, "config", "set", agent_key, "--values", '{"factor": "big"}')
    assert bad.exit_code != 0 and "values.factor" in bad.output
    ok(await agent_factory(config_api, "config", "set", agent_key, "--tenant", "acme", "--disable"))
    shown = json.loads(ok(await agent_factory(config_api, "config", "get", agent_key, "--tenant", "acme",
                                              "-o", "json")))  # fmt: skip
    assert shown["current"]["config"] == {"enabled": False} and shown["merged"]["enabled"] is False


async def test_a_task_queued_before_the_kill_switch_is_not_started(
    config_api: TestClient[Any, Any], agent_key: str, nc: Client, mesh_js: JetStreamContext
) -> None:
    assert (await _put(config_api, agent_key, {"enabled": False}, tenant="acme")).status == 201
    # queued by a producer that did not know yet (obey_config=False stands in for it)
    async with TaskQueue(nc, mesh_js, obey_config=False) as late:
        queued = await late.enqueue(TaskSpec(agent=agent_key, input={"value": 1.0}, tenant="acme"))

    async def finished() -> Any:
        view = await (await config_api.get(f"/api/v1/runs/{queued.run_id}")).json()
        return view if view["status"] not in ("queued", "running") else None

    view = await eventually(finished, 10, "the run settled")
    assert view["status"] in ("failed", "dead_lettered") and view["attempts"] == 1, view
    assert "kill switch" in view["error"] and view["result"] is None

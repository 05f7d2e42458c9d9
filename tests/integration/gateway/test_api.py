"""The management API end to end: API → queue → agent → DB → API, and bad input everywhere."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from agents.store.executions import get_execution

DIESEL = {"fuel": "diesel", "quantity": 100, "unit": "L"}


async def wait_final(api: TestClient[Any, Any], run_id: str, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            resp = await api.get(f"/api/v1/runs/{run_id}")
            assert resp.status == 200
            view = await resp.json()
            if view["status"] in ("succeeded", "failed", "expired"):
                return view
            await asyncio.sleep(0.02)


async def test_a_run_goes_through_queue_agent_and_database_and_back(
    api: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    resp = await api.post("/api/v1/agents/fuel-combustion/runs", json={"input": DIESEL})
    assert resp.status == 202
    accepted = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/runs/{accepted['run_id']}"
    view = await wait_final(api, accepted["run_id"])
    assert view["status"] == "succeeded"
    # 100 L of diesel at the EPA factor (10.21 kg CO2/gal + CH4/N2O) is about 270.6 kg CO2e
    assert view["result"]["co2e_kg"] == pytest.approx(270.583, abs=0.01)
    assert "EPA" in view["result"]["factor_source"]
    async with asyncio.timeout(10):
        while (row := await get_execution(pool, accepted["run_id"])) is None:
            await asyncio.sleep(0.02)
    assert row["status"] == "succeeded" and row["agent_key"] == "fuel-combustion"
    assert row["result"]["co2e_kg"] == view["result"]["co2e_kg"]


async def test_same_idempotency_key_returns_the_original_run(api: TestClient[Any, Any]) -> None:
    body = {"input": DIESEL, "idempotency_key": "api-idem-1"}
    first = await (await api.post("/api/v1/agents/fuel-combustion/runs", json=body)).json()
    second = await (await api.post("/api/v1/agents/fuel-combustion/runs", json=body)).json()
    assert second["run_id"] == first["run_id"]
    assert (first["duplicate"], second["duplicate"]) == (False, True)


async def test_agents_are_listed_with_schemas(api: TestClient[Any, Any]) -> None:
    data = await (await api.get("/api/v1/agents")).json()
    keys = {a["key"] for a in data["agents"]}
    assert {"fuel-combustion", "purchased-electricity", "unit-normaliser"} <= keys
    fuel = next(a for a in data["agents"] if a["key"] == "fuel-combustion")
    assert "fuel" in fuel["input_schema"]["properties"]


async def test_probes_and_metrics_need_no_token(api: TestClient[Any, Any]) -> None:
    bare = {"Authorization": ""}
    assert (await api.get("/healthz", headers=bare)).status == 200
    ready = await api.get("/readyz", headers=bare)
    assert ready.status == 200
    body = await ready.json()
    assert body["checks"] == {"nats": "ok", "postgres": "ok"}
    # What containment a sandboxed run gets here (found once; docs/sandbox.md)
    assert body["sandbox"]["enabled"] is True and body["sandbox"]["levels"]["rlimits"] is True
    levels = body["sandbox"]["levels"]
    assert {"network_namespace", "pid_namespace", "uid_drop"} <= set(levels)
    missing = {name for name in ("network_namespace", "pid_namespace", "uid_drop") if not levels[name]}
    assert missing <= set(levels["off_because"]), levels  # each level that is off says why
    metrics = await (await api.get("/metrics", headers=bare)).text()
    assert "af_task_wait_seconds" in metrics and "# EOF" not in metrics
    # OpenMetrics (what carries exemplars) when the scraper asks for it, as Prometheus does
    openmetrics = await api.get("/metrics", headers={**bare, "Accept": "application/openmetrics-text"})
    assert openmetrics.content_type == "application/openmetrics-text"
    assert (await openmetrics.text()).endswith("# EOF\n")


# (body, where the problem names the mistake, what it says about it); `input` fields are
# located inside the agent's input schema.
BAD_RUN_BODIES = [
    pytest.param({"input": {**DIESEL, "fuel": "unobtainium"}}, ["fuel"], "unknown fuel", id="bad-fuel"),
    pytest.param({"input": {**DIESEL, "quantity": -5}}, ["quantity"], "greater than", id="negative"),
    pytest.param({"input": {"fuel": "diesel"}}, ["quantity"], "Field required", id="missing-fields"),
    pytest.param({"input": DIESEL, "surprise": 1}, ["surprise"], "Extra inputs", id="extra-field"),
    pytest.param({"input": DIESEL, "priority": "URGENT"}, ["priority"], "must be one of", id="bad-priority"),
    pytest.param({"input": DIESEL, "ttl_s": 0}, ["ttl_s"], "greater than", id="ttl-zero"),
    pytest.param({"input": DIESEL, "ttl_s": 90_000}, ["ttl_s"], "less than", id="ttl-too-long"),
    pytest.param({"input": DIESEL, "tenant": "a b"}, ["tenant"], "should match pattern", id="bad-tenant"),
    pytest.param({"input": "diesel"}, ["input"], "valid dictionary", id="input-not-object"),
    pytest.param([1, 2], [], "valid dictionary", id="body-not-object"),
]


@pytest.mark.parametrize(("body", "loc", "needle"), BAD_RUN_BODIES)
async def test_bad_run_requests_get_a_clear_problem(
    api: TestClient[Any, Any], body: Any, loc: list[Any], needle: str
) -> None:
    resp = await api.post("/api/v1/agents/fuel-combustion/runs", json=body)
    assert resp.status == 422
    assert resp.content_type == "application/problem+json"
    problem = await resp.json()
    assert problem["status"] == 422
    said = [(error["loc"], error["msg"]) for error in problem["errors"]]
    assert any(where == loc and needle in msg for where, msg in said), said


async def test_malformed_and_oversized_bodies_are_rejected(api: TestClient[Any, Any]) -> None:
    url = "/api/v1/agents/fuel-combustion/runs"
    headers = {"Content-Type": "application/json"}
    resp = await api.post(url, data=b'{"input": ', headers=headers)
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["detail"]
    # Python's json module reads NaN and Infinity; JSON has neither.
    nan = b'{"input": {"fuel": "diesel", "quantity": NaN, "unit": "L"}}'
    resp = await api.post(url, data=nan, headers=headers)
    assert resp.status == 400 and "NaN is not a JSON value" in (await resp.json())["detail"]
    resp = await api.post(url, data=nan.replace(b"NaN", b"Infinity"), headers=headers)
    assert resp.status == 400
    resp = await api.post(url, data=b"fuel=diesel", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    big = {"input": {**DIESEL, "note": "x" * 100_000}}
    resp = await api.post(url, json=big)
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"


async def test_unknown_agent_and_run_are_404_and_bad_ids_400(api: TestClient[Any, Any]) -> None:
    resp = await api.post("/api/v1/agents/no-such-agent/runs", json={"input": {}})
    assert resp.status == 404 and "no-such-agent" in (await resp.json())["detail"]
    resp = await api.get("/api/v1/runs/0123456789abcdef0123456789abcdef")
    assert resp.status == 404
    resp = await api.get("/api/v1/runs/not-a-valid-id!")
    assert resp.status == 400

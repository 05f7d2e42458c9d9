"""An agent's lifecycle through the API and the CLI (`agent-factory agent …`),
against a gateway with its own worker, a real nats-server and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.registry import Registry
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from tests.helpers import eventually, unique

from .conftest import PROBLEM, TOKEN, ApiTestServer, agent_factory, follow, ok


class In(BaseModel):
    x: int = 0


class Out(BaseModel):
    x: int


def _agent(key: str) -> Agent[In, Out]:
    class Echo(Agent[In, Out]):
        Input, Output = In, Out
        version = "1.2.0"

        async def run(self, input: In, ctx: RunContext) -> Out:
            return Out(x=input.x)

    Echo.key = key
    return Echo()


@pytest.fixture
async def managed(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    """A gateway serving one agent of the test's own (so no other test's agent is drained)."""
    key = unique("life")
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2,
                  worker=InProcessWorker(concurrency=4, idle_poll_s=0.2, drain_timeout_s=5))  # fmt: skip
    gateway = Gateway(Settings(), Registry([_agent(key)]), parts)
    async with gateway.running(nc, pool, token=TOKEN):
        assert gateway.app is not None
        client = TestClient(ApiTestServer(gateway.app))
        await client.start_server()
        client.session.headers["Authorization"] = f"Bearer {TOKEN}"
        yield client, key
        await client.close()


async def test_deploy_health_run_retire_and_history_through_the_api(
    managed: tuple[TestClient[Any, Any], str],
) -> None:
    api, key = managed
    resp = await api.post(f"/api/v1/agents/{key}/lifecycle", json={"action": "deploy", "reason": "first"},
                          headers={"AF-Actor": "alice"})  # fmt: skip
    op = await follow(api, resp)
    assert (op["kind"], op["target"], op["status"], op["progress"]) == ("agent.deploy", key, "succeeded", 100)
    body = op["result"]
    assert body["state"] == "running" and body["version"] == "1.2.0"
    assert [t["to_state"] for t in body["transitions"]][-1] == "running"
    assert {t["actor"] for t in body["transitions"]} == {"api:alice"}

    health = await (await api.get(f"/api/v1/agents/{key}/health")).json()
    assert health["managed"] and health["gate"] == "open"
    assert [(v["version"], v["state"]) for v in health["versions"]] == [("1.2.0", "running")]
    assert [w["running"] for w in health["workers"]] == [0]  # the gateway's worker answers

    run = await (await api.post(f"/api/v1/agents/{key}/runs", json={"input": {"x": 5}})).json()

    async def succeeded() -> bool:
        view = await (await api.get(f"/api/v1/runs/{run['run_id']}")).json()
        return bool(view["status"] == "succeeded" and view["result"] == {"x": 5})

    await eventually(succeeded, 10, "the deployed agent runs a task")

    retired = (
        await follow(api, await api.post(f"/api/v1/agents/{key}/lifecycle", json={"action": "retire"}))
    )["result"]
    assert retired["state"] == "retired" and retired["detail"] == "drained: no worker holds any of its tasks"
    health = await (await api.get(f"/api/v1/agents/{key}/health")).json()
    assert health["gate"] == "stopped (retired)"

    page = await (await api.get(f"/api/v1/agents/{key}/history?limit=3")).json()
    assert [t["to_state"] for t in page["transitions"]] == ["retired", "draining", "running"]
    rest = await (await api.get(f"/api/v1/agents/{key}/history?before={page['next']}")).json()
    assert [t["to_state"] for t in rest["transitions"]][-1] == "validating"


async def test_refusals_are_problems_that_say_why(managed: tuple[TestClient[Any, Any], str]) -> None:
    api, key = managed
    cases = [
        ({"action": "drain"}, 422, "has no lifecycle record; deploy it first"),
        ({"action": "launch"}, 422, ""),
        ({"action": "drain", "drain_timeout_s": 301}, 422, ""),
        ({"action": "deploy", "version": "../x"}, 422, ""),
    ]
    for body, status, detail in cases:
        resp = await api.post(f"/api/v1/agents/{key}/lifecycle", json=body)
        assert resp.status == status and resp.content_type == PROBLEM, (body, await resp.text())
        assert detail in (await resp.json())["detail"]
    resp = await api.post("/api/v1/agents/nobody-here/lifecycle", json={"action": "deploy"})
    assert resp.status == 422 and "not loaded in this process" in (await resp.json())["detail"]

    deployed = await follow(api, await api.post(f"/api/v1/agents/{key}/lifecycle", json={"action": "deploy"}))
    assert deployed["status"] == "succeeded"
    resp = await api.post(f"/api/v1/agents/{key}/lifecycle", json={"action": "deploy", "version": "0.1.0"})
    failed = await follow(api, resp)  # this gateway has 1.2.0: validation fails it, and the operation
    assert failed["status"] == "failed" and failed["result"]["state"] == "failed"
    assert failed["error"] == f"{key} 0.1.0 failed: this process has version 1.2.0, not 0.1.0"
    resp = await api.post(f"/api/v1/agents/{key}/lifecycle", json={"action": "drain", "version": "0.1.0"})
    assert resp.status == 409
    refusal = "cannot go from failed to draining; allowed next: deploying, retired"
    assert (await resp.json())["detail"] == refusal


async def test_the_cli_deploys_shows_drains_and_lists_history(
    managed: tuple[TestClient[Any, Any], str],
) -> None:
    api, key = managed
    out = ok(await agent_factory(api, "agent", "deploy", key, "--reason", "from the CLI"))
    assert f"{key} 1.2.0: running" in out and "warming_up -> running" in out
    status = json.loads(ok(await agent_factory(api, "agent", "status", key, "-o", "json")))
    assert status["gate"] == "open" and status["versions"][0]["state"] == "running"
    out = ok(await agent_factory(api, "agent", "drain", key, "--wait", "--drain-timeout", "5"))
    assert "running -> draining" in out and "drained" in out
    assert "gate closed (draining" in ok(await agent_factory(api, "agent", "status", key))
    history = ok(await agent_factory(api, "agent", "history", key)).splitlines()
    assert "running -> draining" in history[0] and "api" in history[0]
    assert "created -> validating" in history[-1] and "deploy: from the CLI" in history[-1]
    refused = await agent_factory(api, "agent", "drain", key)
    assert refused.exit_code == 1 and "cannot go from draining to draining" in refused.output

"""``GET /api/v1/agents/{key}`` and ``agent-factory agent inspect KEY`` against a real gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.contract import RunContext
from agents.examples import NoOp
from agents.registry import Registry
from agents.resilience import BreakerPolicy, Bulkhead, Fallback, Resilience, RetryPolicy
from agents.store.migrations import apply_migrations
from gateway.app import Gateway, Parts
from gateway.settings import Settings
from mesh.queue.worker import AgentQueueConfig, ensure_lane
from tests.integration.gateway.conftest import agent_factory
from tests.integration.resilience.conftest import In, Out, make_agent

TOKEN = "inspect-token"
BLOCK = Resilience(
    retry=RetryPolicy(max_attempts=4, backoff_base_s=0.5, backoff_max_s=8, jitter=0.2, on=("timeout",)),
    timeout_s=30,
    bulkhead=Bulkhead(max_concurrent=3),
    fallback=Fallback(agents=("noop",), default={"i": 0, "by": "default"}),
    breaker=BreakerPolicy(min_calls=10, failure_rate=0.25, open_s=15),
)


async def _echo(input: In, ctx: RunContext) -> Out:
    return Out(i=input.i)


@pytest.fixture
async def gateway_api(
    nc: Client, mesh_js: JetStreamContext, database_url: str
) -> AsyncIterator[tuple[TestClient[Any, Any], str]]:
    """A gateway (API only) whose registry holds an agent with a full block, and noop."""
    declared = make_agent("inspected", BLOCK, _echo, description="Echoes its number", version="2.1.0")
    broken = make_agent("broken", Resilience(fallback=Fallback(agents=("nowhere",))), _echo)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    parts = Parts(recorder=False, run_index=False, maintenance=False, scheduler=False, serve=False,
                  dedicated=False)  # fmt: skip
    gateway = Gateway(Settings(), Registry([declared, broken, NoOp()]), parts)
    try:
        async with gateway.running(nc, pool, token=TOKEN):
            assert gateway.app is not None
            client = TestClient(TestServer(gateway.app))
            await client.start_server()
            client.session.headers["Authorization"] = f"Bearer {TOKEN}"
            yield client, declared.key
            await client.close()
    finally:
        await pool.close()


async def test_one_agent_is_described_with_its_resilience_block_and_the_queue_settings_it_becomes(
    gateway_api: tuple[TestClient[Any, Any], str], mesh_js: JetStreamContext
) -> None:
    api, key = gateway_api
    resp = await api.get(f"/api/v1/agents/{key}")
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    assert (data["key"], data["version"], data["description"]) == (key, "2.1.0", "Echoes its number")
    assert data["input_schema"]["properties"]["i"]["type"] == "integer"
    res = data["resilience"]
    assert res["block"] == BLOCK.model_dump(mode="json")
    assert res["queue"] == {
        "max_attempts": 4, "backoff_base_s": 0.5, "backoff_max_s": 8, "jitter": 0.2, "concurrency": 3,
        "ack_wait_s": 300.0,
    }  # fmt: skip
    assert res["enforced_in_handler"] is True and res["problem"] is None


async def test_a_block_that_cannot_apply_says_why(gateway_api: tuple[TestClient[Any, Any], str]) -> None:
    api, _ = gateway_api
    listed = (await (await api.get("/api/v1/agents")).json())["agents"]
    broken = next(a["key"] for a in listed if a["key"].startswith("broken-"))
    data = await (await api.get(f"/api/v1/agents/{broken}")).json()
    assert "fallback agent 'nowhere' is not registered" in data["resilience"]["problem"]


@pytest.mark.parametrize(("path", "status"), [("no-such-agent", 404), ("Not%20A%20Key", 400), ("a..b", 400)])
async def test_an_unknown_or_impossible_key_is_a_problem(
    gateway_api: tuple[TestClient[Any, Any], str], path: str, status: int
) -> None:
    api, _ = gateway_api
    resp = await api.get(f"/api/v1/agents/{path}")
    assert resp.status == status and resp.content_type == "application/problem+json"
    assert (await resp.json())["status"] == status


async def test_agent_inspect_shows_the_block_as_a_table_and_as_json(
    gateway_api: tuple[TestClient[Any, Any], str], mesh_js: JetStreamContext
) -> None:
    api, key = gateway_api
    for priority in (0, 1, 2):
        await ensure_lane(mesh_js, AgentQueueConfig(key), priority)
    table = await agent_factory(api, "agent", "inspect", key, token=TOKEN)
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith(f"{key} 2.1.0 (") and "Echoes its number" in lines[1]
    assert "input     {i: integer}" in lines
    shown = {line.split()[0]: line for line in lines if line.startswith("  ")}
    assert "4 attempts, backoff 0.5-8 s (jitter 0.2), on: timeout" in shown["retry"]
    assert "30 s per attempt" in shown["timeout"] and "3 at once per worker" in shown["bulkhead"]
    assert 'noop -> default {"i": 0, "by": "default"}' in shown["fallback"]
    assert "opens at 25% failures of >= 10 calls" in shown["breaker"]
    assert (
        any(line.startswith("versions (gate ") for line in lines)
        and "config (none stored (defaults))" in lines
    )
    assert any(line.startswith("  priority 2: ") for line in lines), table.output  # its lanes
    as_json = await agent_factory(api, "agent", "inspect", key, "-o", "json", token=TOKEN)
    assert as_json.exit_code == 0 and json.loads(as_json.output)["resilience"]["queue"]["concurrency"] == 3
    whole = json.loads(as_json.output)
    assert sorted((lane["agent"], lane["priority"]) for lane in whole["queue"]) == [
        (key, 0),
        (key, 1),
        (key, 2),
    ]
    assert whole["installed"] == []
    assert whole["config"]["agent"] == key and whole["health"]["agent"] == key
    missing = await agent_factory(api, "agent", "inspect", "no-such-agent", token=TOKEN)
    assert missing.exit_code == 1 and "no agent named 'no-such-agent'" in missing.output

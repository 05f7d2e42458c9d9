"""Breakers through the API and the CLI: force open and close with an audit event, a caller
waiting for a result refused at once (503 problem+json) while its task waits in the queue."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient
from nats.aio.client import Client

from mesh import names
from mesh.queue.breakers import BreakerChanged
from tests.helpers import eventually

from .conftest import PROBLEM, agent_factory, ok

AGENT = "fuel-combustion"
INPUT = {"fuel": "diesel", "quantity": 100, "unit": "L"}


async def test_force_open_refuses_waiting_callers_holds_tasks_and_force_close_releases_them(
    api: TestClient[Any, Any], nc: Client
) -> None:
    events = await nc.subscribe(names.breaker_subject(AGENT))
    try:
        args = ["breakers", "open", AGENT, "--reason", "bad deploy", "--for", "120", "-o", "json"]
        opened = json.loads(ok(await agent_factory(api, *args)))
        assert opened["state"] == "open" and opened["reason"] == "bad deploy" and "@" in opened["forced_by"]
        audit = BreakerChanged.model_validate_json((await events.next_msg(timeout=5)).data)
        assert (audit.state.state, audit.by, audit.state.reason) == (
            "open",
            opened["forced_by"],
            "bad deploy",
        )

        listed = json.loads(ok(await agent_factory(api, "breakers", "ls", "-o", "json")))["breakers"]
        assert [b["state"] for b in listed if b["agent"] == AGENT and not b["version"]] == ["open"]
        table = ok(await agent_factory(api, "breakers", "ls"))
        assert AGENT in table and "bad deploy" in table

        resp = await api.post(f"/api/v1/agents/{AGENT}/runs?wait=true", json={"input": INPUT})
        assert resp.status == 503 and resp.content_type == PROBLEM
        problem = await resp.json()
        assert problem["title"] == "Breaker open" and problem["agent"] == AGENT
        assert problem["open_until"] == opened["open_until"] and problem["breaker_reason"] == "bad deploy"
        assert 100 <= int(resp.headers["Retry-After"]) <= 120
        cli_wait = await agent_factory(api, "run", AGENT, "--wait", "--input", json.dumps(INPUT))
        assert cli_wait.exit_code == 1 and "circuit breaker of fuel-combustion is open" in cli_wait.output

        resp = await api.post(f"/api/v1/agents/{AGENT}/runs", json={"input": INPUT})  # not waiting: queued
        assert resp.status == 202
        run_id = (await resp.json())["run_id"]

        closed = json.loads(ok(await agent_factory(
            api, "breakers", "close", AGENT, "--reason", "rolled back", "-o", "json")))  # fmt: skip
        assert closed["state"] == "closed" and closed["forced_by"] == opened["forced_by"]
        audit = BreakerChanged.model_validate_json((await events.next_msg(timeout=5)).data)
        assert (audit.previous, audit.state.state, audit.state.reason) == ("open", "closed", "rolled back")

        async def finished() -> bool:
            view = await (await api.get(f"/api/v1/runs/{run_id}")).json()
            return bool(view["status"] == "succeeded")

        await eventually(finished, 20, "the task held while open ran once closed")
    finally:
        await events.unsubscribe()
        await agent_factory(api, "breakers", "close", AGENT, "--reason", "test cleanup")


async def test_breaker_commands_explain_themselves_and_refuse_bad_input(api: TestClient[Any, Any]) -> None:
    assert "half-open" in ok(await agent_factory(api, "breakers", "--help"))
    missing = await agent_factory(api, "breakers", "open", AGENT)
    assert missing.exit_code != 0 and "--reason" in missing.output
    bad = await agent_factory(api, "breakers", "open", "Not_An_Agent", "--reason", "x")
    assert bad.exit_code == 1 and "is not a agent key" in bad.output
    resp = await api.post(f"/api/v1/breakers/{AGENT}", json={"action": "close", "reason": "x", "by": "me",
                                                              "open_for_s": 5})  # fmt: skip
    assert resp.status == 400 and resp.content_type == PROBLEM


async def test_a_versions_breaker_is_forced_on_its_own_and_does_not_refuse_the_agents_callers(
    api: TestClient[Any, Any],
) -> None:
    try:
        args = [
            "breakers",
            "open",
            AGENT,
            "--version",
            "9.9.9+build.1",
            "--reason",
            "bad canary",
            "-o",
            "json",
        ]
        opened = json.loads(ok(await agent_factory(api, *args)))
        assert (opened["state"], opened["version"]) == ("open", "9.9.9+build.1")
        listed = json.loads(ok(await agent_factory(api, "breakers", "ls", "-o", "json")))["breakers"]
        versions = [(b["version"], b["state"]) for b in listed if b["agent"] == AGENT and b["version"]]
        assert versions == [("9.9.9+build.1", "open")]
        assert f"{AGENT}@9.9.9+build.1" in ok(await agent_factory(api, "breakers", "ls"))
        resp = await api.post(f"/api/v1/agents/{AGENT}/runs?wait=true", json={"input": INPUT})
        assert resp.status == 202  # other versions serve the agent
    finally:
        await agent_factory(
            api, "breakers", "close", AGENT, "--version", "9.9.9+build.1", "--reason", "cleanup"
        )

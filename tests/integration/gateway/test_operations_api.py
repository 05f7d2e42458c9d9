"""Long operations over the API and the CLI (202 Accepted, ``/api/v1/operations``), against
a gateway with its own worker and agents of the test's own, on a real nats-server and
PostgreSQL: accepted and followed to their end, progress and history persisted, the
event stream, cancellation, idempotency keys, and tenants."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents import PermanentError
from agents.contract import Agent, RunContext
from agents.registry import Registry
from agents.store.tenancy import ALL_TENANTS, app_pool, tenant_scope
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from tests.helpers import eventually, unique

from .conftest import FINAL, PROBLEM, TOKEN, ApiTestServer, agent_factory, follow, ok


class In(BaseModel):
    sleep_s: float = 0.0


class Out(BaseModel):
    slept: float


def _sleepy(key: str) -> Agent[In, Out]:
    class Sleepy(Agent[In, Out]):
        Input, Output = In, Out
        version = "1.0.0"

        async def run(self, input: In, ctx: RunContext) -> Out:
            await asyncio.sleep(input.sleep_s)
            return Out(slept=input.sleep_s)

    Sleepy.key = key
    return Sleepy()


def _failing(key: str) -> Agent[In, Out]:
    class Failing(Agent[In, Out]):
        Input, Output = In, Out

        async def run(self, input: In, ctx: RunContext) -> Out:
            raise PermanentError("always")  # straight to the DLQ

    Failing.key = key
    return Failing()


class Fleet:
    def __init__(self, api: TestClient[Any, Any], sleepy: str, failing: str) -> None:
        self.api, self.sleepy, self.failing = api, sleepy, failing

    async def act(self, body: dict[str, Any], **headers: str) -> Any:
        return await self.api.post(f"/api/v1/agents/{self.sleepy}/lifecycle", json=body, headers=headers)

    async def deployed(self) -> None:
        op = await follow(self.api, await self.act({"action": "deploy"}))
        assert op["status"] == "succeeded", op

    async def busy(self, sleep_s: float) -> str:
        """A run of the sleepy agent that holds a worker for ``sleep_s``, once it runs."""
        url = f"/api/v1/agents/{self.sleepy}/runs"
        run = await (await self.api.post(url, json={"input": {"sleep_s": sleep_s}})).json()

        async def running() -> bool:
            view = await (await self.api.get(f"/api/v1/runs/{run['run_id']}")).json()
            return bool(view["status"] == "running")

        await eventually(running, 10, "the long run started")
        return str(run["run_id"])


@pytest.fixture
async def fleet(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[Fleet]:
    """A gateway serving two agents of the test's own: one that sleeps as long as asked
    (a drain waits for it), one whose every run is dead-lettered; as the application's
    role, which row security binds."""
    sleepy, failing = unique("ops-sleepy"), unique("ops-failing")
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2, dedicated=False,
                  worker=InProcessWorker(concurrency=8, idle_poll_s=0.2, drain_timeout_s=1))  # fmt: skip
    settings = Settings(operation_heartbeat_s=0.2)
    gateway = Gateway(settings, Registry([_sleepy(sleepy), _failing(failing)]), parts)
    app_db = await app_pool(database_url, size=settings.database_pool_size)
    try:
        async with gateway.running(nc, app_db, token=TOKEN):
            assert gateway.app is not None
            client = TestClient(ApiTestServer(gateway.app))
            await client.start_server()
            client.session.headers["Authorization"] = f"Bearer {TOKEN}"
            yield Fleet(client, sleepy, failing)
            await client.close()
    finally:
        await app_db.close()


async def test_a_deploy_is_accepted_with_its_location_and_followed_to_success_with_its_history_kept(
    fleet: Fleet, pool: asyncpg.Pool
) -> None:
    resp = await fleet.act({"action": "deploy", "reason": "ops"}, **{"AF-Actor": "bob"})
    assert resp.status == 202
    accepted = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/operations/{accepted['id']}" == accepted["url"]
    assert (accepted["kind"], accepted["target"], accepted["tenant"]) == ("agent.deploy", fleet.sleepy, None)
    assert accepted["status"] in ("queued", "running") and accepted["finished_at"] is None
    assert accepted["request"]["actor"] == "api:bob" and accepted["created_by"] == "settings"

    op = await follow(fleet.api, resp)
    assert (op["status"], op["progress"], op["error"]) == ("succeeded", 100, None)
    assert op["result"]["state"] == "running" and op["result"]["transitions"][-1]["actor"] == "api:bob"
    assert op["created_at"] <= op["started_at"] <= op["finished_at"] and op["attempts"] == 1

    history = op["history"]
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
    assert (history[0]["status"], history[0]["message"]) == ("queued", "accepted")
    assert history[1]["status"] == "running" and history[-1]["status"] == "succeeded"
    said = [e["message"] for e in history]
    assert "created -> validating" in said and any(m.startswith("warming_up -> running") for m in said)
    progress = [e["progress"] for e in history]
    assert progress == sorted(progress) and progress[-1] == 100
    async with tenant_scope(pool, ALL_TENANTS) as conn:  # persisted: PostgreSQL has it all
        row = await conn.fetchrow("SELECT status, progress, result FROM operations WHERE id = $1", op["id"])
        kept = await conn.fetchval("SELECT count(*) FROM operation_events WHERE operation_id = $1", op["id"])
    assert (row["status"], row["progress"], json.loads(row["result"])["state"]) == (
        "succeeded",
        100,
        "running",
    )
    assert kept == len(history)


async def test_the_event_stream_sends_every_event_in_order_as_it_happens_and_ends_with_the_operation(
    fleet: Fleet,
) -> None:
    await fleet.deployed()
    await fleet.busy(2.0)
    resp = await fleet.act({"action": "drain", "wait": True, "drain_timeout_s": 30})
    accepted = await resp.json()
    async with fleet.api.get(accepted["events_url"]) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(20):
            async for raw in stream.content:  # one line at a time, as the server writes them
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    ids = int(line[4:])
                elif line.startswith("data: "):
                    seen.append({"id": ids, **json.loads(line[6:])})
                    if len(seen) == 1:  # the first arrives while the drain still waits
                        now = await (await fleet.api.get(accepted["url"])).json()
                        assert now["status"] in ("queued", "running")
    # The stream ended by itself (the loop above left at its end), after the final event.
    assert [e["seq"] for e in seen] == [e["id"] for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0]["status"] == "queued" and seen[-1]["status"] == "succeeded"
    assert any(e["message"].startswith("running -> draining: waiting for 1 task(s)") for e in seen)
    final = await (await fleet.api.get(accepted["url"])).json()
    assert final["status"] == "succeeded" and final["result"]["detail"].startswith("drained")
    assert [e["seq"] for e in final["history"]] == [e["seq"] for e in seen]

    # Last-Event-ID: a reconnecting client gets what it missed only.
    last = seen[-2]["seq"]
    text = await (await fleet.api.get(accepted["events_url"], headers={"Last-Event-ID": str(last)})).text()
    assert [json.loads(line[6:])["seq"] for line in text.splitlines() if line.startswith("data: ")] == [
        seen[-1]["seq"]
    ]


async def test_a_long_drain_is_cancelled_at_its_next_look_and_the_agent_stays_draining(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    await fleet.deployed()
    await fleet.busy(30.0)
    accepted = await (await fleet.act({"action": "drain", "wait": True, "drain_timeout_s": 60})).json()
    async with fleet.api.get(accepted["events_url"]) as stream:  # a watcher that leaves early
        assert (await stream.content.readline()).startswith(b"id: 1")

    async def waiting() -> bool:
        op = await (await fleet.api.get(accepted["url"])).json()
        return "waiting for 1 task(s)" in op["message"]

    await eventually(waiting, 10, "the drain waits for the long run")
    started = asyncio.get_running_loop().time()
    resp = await fleet.api.delete(accepted["url"])
    assert resp.status == 202 and (await resp.json())["cancel_requested_at"] is not None
    async with asyncio.timeout(10):  # not the 30 s of the run, nor the drain's 60
        while (op := await (await fleet.api.get(accepted["url"])).json())["status"] not in FINAL:
            await asyncio.sleep(0.05)
    assert asyncio.get_running_loop().time() - started < 5
    assert op["status"] == "cancelled" and op["finished_at"] is not None and op["result"] is None
    assert op["message"].startswith("cancelled at ") and "what was done stays done" in op["message"]
    assert [e["message"] for e in op["history"]][-2:] == ["cancel requested", op["message"]]
    health = await (await fleet.api.get(f"/api/v1/agents/{fleet.sleepy}/health")).json()
    assert health["versions"][0]["state"] == "draining"  # the drain itself happened; only the wait stopped

    again = await fleet.api.delete(accepted["url"])
    assert again.status == 409 and again.content_type == PROBLEM
    assert (await again.json())["detail"] == f"operation {accepted['id']} already cancelled"
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # the watcher gone: no error


async def test_an_idempotency_key_returns_the_same_operation_and_409_for_another_request(
    fleet: Fleet,
) -> None:
    key = {"Idempotency-Key": unique("deploy")}
    first = await fleet.act({"action": "deploy"}, **key)
    op = await follow(fleet.api, first)
    assert op["idempotency_key"] == key["Idempotency-Key"]

    retried = await fleet.act({"action": "deploy"}, **key)  # after it ended: the same, not a new deploy
    assert retried.status == 202 and retried.headers["Location"] == first.headers["Location"]
    assert (await retried.json())["id"] == op["id"]
    again = await (await fleet.api.get(op["url"])).json()
    assert again["history"] == op["history"]  # nothing ran a second time
    listed = await (await fleet.api.get("/api/v1/operations?kind=agent.deploy&limit=500")).json()
    assert [o["id"] for o in listed["operations"] if o["idempotency_key"] == key["Idempotency-Key"]] == [
        op["id"]
    ]

    other = await fleet.act({"action": "deploy", "reason": "something else"}, **key)
    assert other.status == 409 and other.content_type == PROBLEM
    assert f"was used for another request (operation {op['id']}" in (await other.json())["detail"]
    elsewhere = await fleet.api.post("/api/v1/queue/dlq/replay", json={"all": True}, headers=key)
    assert elsewhere.status == 409  # a key names one operation per tenant, whatever the route

    # Two requests racing with one new key start one operation.
    race = {"Idempotency-Key": unique("race")}
    answers = await asyncio.gather(*(fleet.act({"action": "deploy"}, **race) for _ in range(5)))
    assert {a.status for a in answers} == {202}
    assert len({(await a.json())["id"] for a in answers}) == 1

    assert (await fleet.act({"action": "deploy"}, **{"Idempotency-Key": "x" * 257})).status == 400


async def test_replaying_many_dead_letters_is_an_operation_whose_progress_counts_them(
    fleet: Fleet, mesh_js: JetStreamContext
) -> None:
    url = f"/api/v1/agents/{fleet.failing}/runs"
    runs = [(await (await fleet.api.post(url, json={"input": {}})).json())["run_id"] for _ in range(30)]

    async def all_dead() -> bool:
        listed = await (await fleet.api.get(f"/api/v1/queue/dlq?agent={fleet.failing}")).json()
        return len(listed["dead_letters"]) == len(runs)

    await eventually(all_dead, 20, "every run dead-lettered")
    resp = await fleet.api.post("/api/v1/queue/dlq/replay", json={"agent": fleet.failing})
    op = await follow(fleet.api, resp)
    assert (op["kind"], op["target"], op["status"]) == ("dlq.replay", fleet.failing, "succeeded")
    assert sorted(op["result"]["replayed"]) == sorted(runs) and op["result"]["failed"] == []
    said = [e["message"] for e in op["history"]]
    assert "30 dead letter(s) to replay" in said and "30 of 30 dead letter(s) done" in said
    assert any(m.startswith("3 of 30") for m in said)  # progress as letters go, a percent at a time

    # One dead letter stays synchronous (200); the CLI follows the operation for many.
    await eventually(all_dead, 20, "every replayed run dead-lettered again")
    out = ok(await agent_factory(fleet.api, "queue", "dlq", "replay", "--agent", fleet.failing))
    assert "replayed  30" in out and "[100%] succeeded" in out  # lines as it goes, the last one


async def test_a_tenant_token_sees_no_fleet_operation(fleet: Fleet) -> None:
    op = await follow(fleet.api, await fleet.act({"action": "deploy"}))
    tenant = unique("opt")
    assert (await fleet.api.post("/api/v1/tenants", json={"id": tenant})).status == 201
    made = await fleet.api.post("/api/v1/tokens", json={"scope": "operator", "tenant": tenant})
    theirs = {"Authorization": f"Bearer {(await made.json())['secret']}"}
    for method, path in [("GET", op["url"]), ("GET", op["events_url"]), ("DELETE", op["url"])]:
        resp = await fleet.api.request(method, path, headers=theirs)
        assert resp.status == 404 and resp.content_type == PROBLEM, (method, path, await resp.text())
    listed = await (await fleet.api.get("/api/v1/operations", headers=theirs)).json()
    assert listed == {"operations": []}  # row security: another tenant's and the fleet's are not there
    refused = await fleet.api.post(f"/api/v1/agents/{fleet.sleepy}/lifecycle", json={"action": "drain"},
                                   headers=theirs)  # fmt: skip
    assert refused.status == 403  # starting a fleet operation stays a fleet token's


async def test_bad_operation_requests_are_problems(fleet: Fleet) -> None:
    for path, status in [
        ("/api/v1/operations/not-an-id", 400),
        (f"/api/v1/operations/{'0' * 32}", 404),
        (f"/api/v1/operations/{'0' * 32}/events", 404),
        ("/api/v1/operations?status=done", 400),
        ("/api/v1/operations?kind=Bad Kind", 400),
        ("/api/v1/operations?limit=501", 400),
    ]:
        resp = await fleet.api.get(path)
        assert resp.status == status and resp.content_type == PROBLEM, (path, await resp.text())
    resp = await fleet.act({"action": "drain"})  # refused before any operation starts: never deployed
    assert resp.status == 422 and "has no lifecycle record" in (await resp.json())["detail"]


async def test_the_cli_follows_lists_shows_waits_for_and_cancels_operations(fleet: Fleet) -> None:
    out = ok(await agent_factory(fleet.api, "agent", "deploy", fleet.sleepy))
    # A line each time its message changes (this is no terminal: no bar), then what it did.
    assert out.startswith("  [  0%] accepted\n") and "  [100%] succeeded\n" in out
    assert f"{fleet.sleepy} 1.0.0: running" in out and "  warming_up -> running" in out
    listed = json.loads(
        ok(await agent_factory(fleet.api, "ops", "ls", "--kind", "agent.deploy", "-o", "json"))
    )
    deploy = next(o for o in listed["operations"] if o["target"] == fleet.sleepy)
    table = ok(await agent_factory(fleet.api, "ops", "ls", "--status", "succeeded"))
    assert table.startswith("ID") and deploy["id"] in table
    shown = ok(await agent_factory(fleet.api, "ops", "get", deploy["id"]))
    assert "status" in shown and "succeeded" in shown and "created -> validating" in shown
    waited = ok(await agent_factory(fleet.api, "ops", "wait", deploy["id"]))
    assert waited.strip().endswith(f"{deploy['id']}: succeeded")

    await fleet.busy(30.0)
    body = {"action": "drain", "wait": True, "drain_timeout_s": 60}
    accepted = await (await fleet.act(body)).json()
    out = ok(await agent_factory(fleet.api, "ops", "cancel", accepted["id"]))
    assert "cancellation asked" in out
    waited_out = await agent_factory(fleet.api, "ops", "wait", accepted["id"], "--timeout", "10")
    assert waited_out.exit_code == 1 and f"{accepted['id']}: cancelled" in waited_out.output
    refused = await agent_factory(fleet.api, "ops", "cancel", accepted["id"])
    assert refused.exit_code == 1 and "already cancelled" in refused.output

"""Queue operations over the API: stats, dead letters, batch submit, with clear errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from mesh.deadletters import DeadLetter, dead_letter
from mesh.envelope import new_id
from mesh.queue import dlq

DIESEL = {"fuel": "diesel", "quantity": 100, "unit": "L"}


async def wait_status(api: TestClient[Any, Any], run_id: str, status: str) -> Any:
    async with asyncio.timeout(15):
        while True:
            view = await (await api.get(f"/api/v1/runs/{run_id}")).json()
            if view["status"] == status:
                return view
            await asyncio.sleep(0.05)


async def test_batch_submit_runs_every_task(api: TestClient[Any, Any]) -> None:
    tasks = [{"agent": "fuel-combustion", "input": {**DIESEL, "quantity": q}} for q in (1, 2, 3)]
    tasks.append({"agent": "purchased-electricity", "input": {"region": "GB", "quantity": 1000}})
    resp = await api.post("/api/v1/queue/batch", json={"tasks": tasks, "batch_key": "b-1"})
    assert resp.status == 202
    runs = (await resp.json())["runs"]
    views = [await wait_status(api, r["run_id"], "succeeded") for r in runs]
    assert [v["result"]["co2e_kg"] for v in views[:3]] == pytest.approx([2.70583, 5.41166, 8.11749])
    assert views[3]["result"]["co2e_kg"] == pytest.approx(207.05)
    again = await (await api.post("/api/v1/queue/batch", json={"tasks": tasks, "batch_key": "b-1"})).json()
    assert [r["run_id"] for r in again["runs"]] == [r["run_id"] for r in runs] and again["duplicate"]


async def test_batch_with_one_invalid_input_is_rejected_whole(api: TestClient[Any, Any]) -> None:
    tasks = [{"agent": "fuel-combustion", "input": DIESEL}, {"agent": "fuel-combustion", "input": {}}]
    resp = await api.post("/api/v1/queue/batch", json={"tasks": tasks})
    assert resp.status == 422
    problem = await resp.json()
    assert problem["errors"][0]["loc"][:3] == ["tasks", 1, "input"]
    for body, status in [
        ({"tasks": []}, 422),
        ({"tasks": [{"agent": "fuel-combustion", "input": DIESEL}] * 1001}, 413),
        ({"tasks": [{"agent": "nope", "input": {}}]}, 404),
        ({"tasks": [{"agent": "fuel-combustion", "input": DIESEL, "idempotency_key": "k"}]}, 422),
    ]:
        resp = await api.post("/api/v1/queue/batch", json=body)
        assert resp.status == status, (body if len(str(body)) < 200 else "1001 tasks", await resp.text())


async def test_dead_letters_over_the_api(api: TestClient[Any, Any]) -> None:
    # A unit the agent accepts at the edge but cannot convert fails permanently at run time.
    bad = {"fuel": "diesel", "quantity": 5, "unit": "kg"}
    run = await (await api.post("/api/v1/agents/fuel-combustion/runs", json={"input": bad})).json()
    view = await wait_status(api, run["run_id"], "failed")
    assert "measured by volume" in view["error"]
    listed = (await (await api.get("/api/v1/queue/dlq?agent=fuel-combustion")).json())["dead_letters"]
    mine = next(d for d in listed if d["run_id"] == run["run_id"])
    shown = await (await api.get(f"/api/v1/queue/dlq/{mine['seq']}")).json()
    assert shown["payload"]["payload"]["input"] == bad
    assert len(shown["errors"]) == 3  # retried: ValueError is not permanent
    stats = await (await api.get("/api/v1/queue/stats")).json()
    assert stats["dead_letters"]["fuel-combustion"] >= 1
    replay = await api.post("/api/v1/queue/dlq/replay", json={"seq": mine["seq"]})
    assert (await replay.json())["replayed"] == [run["run_id"]]
    await wait_status(api, run["run_id"], "failed")  # still bad input: back in the DLQ
    listed = (await (await api.get("/api/v1/queue/dlq?agent=fuel-combustion")).json())["dead_letters"]
    again = next(d for d in listed if d["run_id"] == run["run_id"])
    purged = await api.post("/api/v1/queue/dlq/purge", json={"seq": again["seq"]})
    assert (await purged.json())["purged"] == 1
    assert (await api.get(f"/api/v1/queue/dlq/{again['seq']}")).status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/api/v1/queue/dlq/replay", {}, 422),
        ("POST", "/api/v1/queue/dlq/replay", {"seq": 1, "all": True}, 422),
        ("POST", "/api/v1/queue/dlq/purge", {"agent": "Bad Agent"}, 422),
        ("GET", "/api/v1/queue/dlq/abc", None, 400),
        ("GET", "/api/v1/queue/dlq?limit=-1", None, 400),
        ("GET", "/api/v1/queue/dlq/999999999", None, 404),
    ],
)
async def test_bad_queue_requests_get_problems(
    api: TestClient[Any, Any], method: str, path: str, body: Any, status: int
) -> None:
    resp = await api.request(method, path, json=body)
    assert resp.status == status
    assert resp.content_type == "application/problem+json"


async def test_replaying_a_channel_dead_letter_is_refused_with_409_and_keeps_it(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    channel = f"durable:{new_id()[:12]}"
    letter = DeadLetter.of(origin="channels", name=channel, subject=f"af.ch.{channel}", payload=b"{}")
    seq = await dead_letter(mesh_js, letter, f"test-{letter.id}")
    resp = await api.post("/api/v1/queue/dlq/replay", json={"seq": seq})
    assert resp.status == 409, await resp.text()
    assert "came from a channel" in (await resp.json())["detail"]
    assert await dlq.count(mesh_js, origin="channels", name=channel) == 1

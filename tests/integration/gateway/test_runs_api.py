"""Runs you can find and stop: list with filters and a cursor, cancel, the whole story of
one run in `get`, and idempotency keys that answer the truth."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from click.testing import CliRunner

from gateway.api.services import SERVICES
from gateway.cli import cli
from mesh.queue.producer import TaskSpec
from tests.helpers import unique

DIESEL = {"fuel": "diesel", "quantity": 100, "unit": "L"}
PROBLEM = "application/problem+json"
TOKEN_HEADER = "Authorization"


async def _final(api: TestClient[Any, Any], run_id: str, timeout: float = 15) -> Any:
    async with asyncio.timeout(timeout):
        while True:
            view = await (await api.get(f"/api/v1/runs/{run_id}")).json()
            if view["status"] in ("succeeded", "failed", "expired", "cancelled"):
                return view
            await asyncio.sleep(0.05)


async def _submit(api: TestClient[Any, Any], agent: str, tenant: str, **body: Any) -> Any:
    resp = await api.post(f"/api/v1/agents/{agent}/runs", json={"tenant": tenant, **body})
    assert resp.status == 202, await resp.text()
    return await resp.json()


async def _listed(api: TestClient[Any, Any], query: str, want: int, timeout: float = 15) -> list[Any]:
    """Every page of ``GET /api/v1/runs?<query>`` once the index holds ``want`` runs for it."""
    async with asyncio.timeout(timeout):
        while True:
            resp = await api.get(f"/api/v1/runs?{query}&limit=1000")
            assert resp.status == 200, await resp.text()
            runs = (await resp.json())["runs"]
            if len(runs) >= want:
                return list(runs)
            await asyncio.sleep(0.1)


async def test_runs_are_listed_newest_first_filtered_and_paged_without_repeats_or_gaps(
    api: TestClient[Any, Any],
) -> None:
    tenant = unique("t")
    fuel = [
        await _submit(api, "fuel-combustion", tenant, input={**DIESEL, "quantity": q}) for q in range(1, 6)
    ]
    power = [
        await _submit(api, "purchased-electricity", tenant, input={"region": "GB", "quantity": q})
        for q in (10, 20)
    ]
    # kg of diesel is accepted at the edge and fails at run time: a failed run to filter on.
    broken = await _submit(api, "fuel-combustion", tenant, input={**DIESEL, "unit": "kg"})
    for run in [*fuel, *power, broken]:
        await _final(api, run["run_id"])
    everything = await _listed(api, f"tenant={tenant}&status=succeeded,failed", 8)
    ids = [r["run_id"] for r in everything]
    assert sorted(ids) == sorted(r["run_id"] for r in [*fuel, *power, broken])
    stamps = [(r["enqueued_at"], r["run_id"]) for r in everything]
    assert stamps == sorted(stamps, reverse=True)  # newest first

    paged: list[str] = []
    cursor = None
    for _ in range(3):
        query = f"tenant={tenant}&limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(f"/api/v1/runs?{query}")).json()
        assert len(page["runs"]) <= 3
        paged += [r["run_id"] for r in page["runs"]]
        cursor = page["next_cursor"]
    assert cursor is None and paged == ids  # every run once, in order, in 3 pages

    by_agent = await _listed(api, f"tenant={tenant}&agent=purchased-electricity", 2)
    assert sorted(r["run_id"] for r in by_agent) == sorted(r["run_id"] for r in power)
    failed = await _listed(api, f"tenant={tenant}&status=failed", 1)
    assert [r["run_id"] for r in failed] == [broken["run_id"]] and failed[0]["status"] == "failed"
    assert failed[0]["priority"] == "NORMAL" and failed[0]["agent"] == "fuel-combustion"
    since = everything[2]["enqueued_at"]  # the third newest: it and the two after it
    recent = await _listed(api, f"tenant={tenant}&since={since.replace('+', '%2B')}", 3)
    assert [r["run_id"] for r in recent] == ids[:3]
    other = await (await api.get(f"/api/v1/runs?tenant={unique('nobody')}")).json()
    assert other == {"runs": [], "next_cursor": None}


@pytest.mark.parametrize(
    "query",
    ["status=done", "status=queued,", "since=yesterday", "since=2026-12-03T10:00:00", "cursor=bm9wZQ",
     "limit=0x10", "agent=NOPE", "tenant=a.b"],
)  # fmt: skip
async def test_a_bad_listing_query_is_a_400_problem(api: TestClient[Any, Any], query: str) -> None:
    resp = await api.get(f"/api/v1/runs?{query}")
    assert resp.status == 400 and resp.content_type == PROBLEM, (query, await resp.text())


async def test_get_tells_a_runs_whole_story(api: TestClient[Any, Any]) -> None:
    tenant = unique("t")
    run = await _submit(api, "fuel-combustion", tenant, input=DIESEL, priority="HIGH")
    view = await _final(api, run["run_id"])
    assert view["input"] == DIESEL and view["priority"] == "HIGH" and view["replay"] == 0
    assert view["worker"] and "@" in view["worker"]  # name@host/pid of the worker that ran it
    assert view["first_started_at"] == view["started_at"]
    assert datetime.fromisoformat(view["first_started_at"]) >= datetime.fromisoformat(view["enqueued_at"])


async def test_a_replayed_run_keeps_the_errors_and_first_start_of_every_round(
    api: TestClient[Any, Any],
) -> None:
    tenant = unique("t")
    run = await _submit(api, "fuel-combustion", tenant, input={**DIESEL, "unit": "kg"})
    first = await _final(api, run["run_id"])
    rounds = len(first["errors"])  # every attempt of the first round failed
    assert first["status"] == "failed" and rounds >= 1 and {e["replay"] for e in first["errors"]} == {0}
    letters = await (await api.get("/api/v1/queue/dlq?agent=fuel-combustion&limit=1000")).json()
    seq = next(d["seq"] for d in letters["dead_letters"] if d["run_id"] == run["run_id"])
    resp = await api.post("/api/v1/queue/dlq/replay", json={"seq": seq})
    assert resp.status == 200, await resp.text()
    async with asyncio.timeout(15):
        while (again := await _final(api, run["run_id"]))["replay"] != 1:
            await asyncio.sleep(0.05)
    assert again["status"] == "failed"
    # Both rounds, not only the last.
    assert [e["replay"] for e in again["errors"]] == [0] * rounds + [1] * rounds
    assert all("measured by volume" in e["error"] for e in again["errors"])
    assert again["first_started_at"] == first["first_started_at"] != again["started_at"]


async def test_a_duplicate_submission_answers_with_the_runs_real_status(api: TestClient[Any, Any]) -> None:
    tenant, key = unique("t"), unique("invoice")
    first = await _submit(api, "fuel-combustion", tenant, input=DIESEL, idempotency_key=key)
    assert first["status"] == "queued" and not first["duplicate"]
    await _final(api, first["run_id"])
    # The same input with its keys in another order is the same request.
    same = {"unit": "L", "quantity": 100, "fuel": "diesel"}
    again = await _submit(api, "fuel-combustion", tenant, input=same, idempotency_key=key)
    assert again["run_id"] == first["run_id"] and again["duplicate"] and again["status"] == "succeeded"


async def test_an_idempotency_key_reused_for_another_request_is_refused_with_409(
    api: TestClient[Any, Any],
) -> None:
    tenant, key = unique("t"), unique("invoice")
    first = await _submit(api, "fuel-combustion", tenant, input=DIESEL, idempotency_key=key)
    for agent, run_input in [
        ("fuel-combustion", {**DIESEL, "quantity": 101}),
        ("purchased-electricity", {"region": "GB", "quantity": 1}),
    ]:
        resp = await api.post(
            f"/api/v1/agents/{agent}/runs",
            json={"tenant": tenant, "input": run_input, "idempotency_key": key},
        )
        assert resp.status == 409 and resp.content_type == PROBLEM
        problem = await resp.json()
        assert first["run_id"] in problem["detail"] and "another agent or input" in problem["detail"]
    # Keys are per tenant: another tenant's same key is its own.
    other = await _submit(
        api, "fuel-combustion", unique("t"), input={**DIESEL, "quantity": 7}, idempotency_key=key
    )
    assert other["run_id"] != first["run_id"] and not other["duplicate"]
    batch = {"tasks": [{"agent": "fuel-combustion", "input": DIESEL, "tenant": tenant}], "batch_key": key}
    assert (await api.post("/api/v1/queue/batch", json=batch)).status == 202
    batch["tasks"][0]["input"] = {**DIESEL, "quantity": 3}  # type: ignore[index]
    resp = await api.post("/api/v1/queue/batch", json=batch)
    assert resp.status == 409 and resp.content_type == PROBLEM


async def test_cancel_over_the_api_answers_404_409_and_the_cancelled_state(
    api: TestClient[Any, Any],
) -> None:
    resp = await api.delete(f"/api/v1/runs/{unique('no-such-run')}")
    assert resp.status == 404 and resp.content_type == PROBLEM
    tenant = unique("t")
    done = await _submit(api, "fuel-combustion", tenant, input=DIESEL)
    await _final(api, done["run_id"])
    resp = await api.delete(f"/api/v1/runs/{done['run_id']}")
    assert resp.status == 409 and resp.content_type == PROBLEM
    assert "succeeded" in (await resp.json())["detail"]
    assert (await api.delete("/api/v1/runs/%C3%A9t%C3%A9")).status == 400


async def test_a_queued_run_cancelled_over_the_api_is_cancelled_everywhere(api: TestClient[Any, Any]) -> None:
    # An agent no worker serves: its run waits in the queue until cancelled.
    svc = api.server.app[SERVICES]
    tenant, agent = unique("t"), unique("idle")
    queued = await svc.queue.enqueue(TaskSpec(agent, {"n": 7}, tenant=tenant))
    resp = await api.delete(f"/api/v1/runs/{queued.run_id}")
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert (
        view["status"] == "cancelled"
        and view["input"] == {"n": 7}
        and view["error"] == "cancelled: by request"
    )
    assert (await _final(api, queued.run_id))["status"] == "cancelled"
    listed = await _listed(api, f"tenant={tenant}&status=cancelled", 1)
    assert [r["run_id"] for r in listed] == [queued.run_id]
    again = await api.delete(f"/api/v1/runs/{queued.run_id}")
    assert again.status == 409 and "cancelled" in (await again.json())["detail"]


async def test_the_cli_lists_and_cancels(api: TestClient[Any, Any]) -> None:
    tenant = unique("t")
    run = await _submit(api, "fuel-combustion", tenant, input=DIESEL)
    await _final(api, run["run_id"])
    # Indexed as succeeded, not only indexed: the index may hold its running state a batch longer.
    await _listed(api, f"tenant={tenant}&status=succeeded", 1)
    url = str(api.make_url("")).rstrip("/")
    token = api.session.headers[TOKEN_HEADER].split()[1]
    base = ["--api-url", url, "--token", token]

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(cli, [*base, *args], catch_exceptions=False)

    listed = await asyncio.to_thread(invoke, "-o", "json", "runs", "ls", "--tenant", tenant)
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.output)["runs"]] == [run["run_id"]]
    table = await asyncio.to_thread(invoke, "runs", "ls", "--tenant", tenant, "--status", "succeeded")
    assert run["run_id"] in table.output and "succeeded" in table.output
    assert datetime.fromisoformat(json.loads(listed.output)["runs"][0]["enqueued_at"]).tzinfo is not None
    failing = await _submit(api, "fuel-combustion", tenant, input={**DIESEL, "unit": "kg"})
    await _final(api, failing["run_id"])
    shown = await asyncio.to_thread(invoke, "get", failing["run_id"])
    assert (
        shown.exit_code == 0
        and "attempt 1" in shown.output
        and "ValueError: diesel is measured" in shown.output
    )
    refused = await asyncio.to_thread(invoke, "cancel", run["run_id"])
    assert refused.exit_code == 1 and "already finished: succeeded" in refused.output

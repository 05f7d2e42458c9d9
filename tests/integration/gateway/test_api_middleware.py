"""The middleware around every route, through the real gateway (NATS, PostgreSQL, a
worker): correlation ids in, out and onto the run's events; per-token rate limits with
Retry-After; one JSON access log line per request, the token never in it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from mesh import names
from tests.helpers import eventually
from tests.integration.gateway.conftest import PROBLEM, TOKEN


async def _finished_envelope(js: JetStreamContext, run_id: str) -> dict[str, Any] | None:
    try:
        raw = await js.get_last_msg(names.STREAM_EVENTS, names.finished_subject("noop", run_id))
    except Exception:
        return None
    return dict(json.loads(raw.data))


async def test_a_correlation_id_given_comes_back_and_reaches_the_runs_events(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    headers = {"X-Correlation-ID": "upload-42:batch/7"}
    async with api.post("/api/v1/agents/noop/runs", json={"input": {"echo": 1}}, headers=headers) as resp:
        assert resp.status == 202 and resp.headers["X-Correlation-ID"] == "upload-42:batch/7"
        run_id = (await resp.json())["run_id"]
    event = await eventually(lambda: _finished_envelope(mesh_js, run_id), 15, "the run's finished event")
    assert event["correlation_id"] == "upload-42:batch/7"

    batch = {"tasks": [{"agent": "noop", "input": {"echo": 2}}]}
    async with api.post("/api/v1/queue/batch", json=batch) as resp:
        made = resp.headers["X-Correlation-ID"]  # none given: one made for the request
        assert resp.status == 202 and re.fullmatch(r"[0-9a-f]{32}", made), made
        [run] = (await resp.json())["runs"]
    event = await eventually(lambda: _finished_envelope(mesh_js, run["run_id"]), 15, "the batch run's event")
    assert event["correlation_id"] == made


async def test_a_bad_correlation_id_is_a_400_and_every_answer_carries_one(api: TestClient[Any, Any]) -> None:
    async with api.get("/api/v1/agents", headers={"X-Correlation-ID": "no spaces allowed"}) as resp:
        assert resp.status == 400 and resp.content_type == PROBLEM
        assert "X-Correlation-ID" in (await resp.json())["detail"]
        assert resp.headers["X-Correlation-ID"]
    async with api.get("/api/v1/agents", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401 and resp.headers["X-Correlation-ID"]  # refused answers too
    async with api.get("/api/v1/runs/0123456789abcdef0123456789abcdef") as resp:
        assert resp.status == 404 and resp.headers["X-Correlation-ID"]


@pytest.mark.parametrize("api", [{"api_rate_per_s": 2.0, "api_burst": 3}], indirect=True)
async def test_a_token_past_its_rate_gets_429_with_retry_after_and_others_are_not_affected(
    api: TestClient[Any, Any],
) -> None:
    statuses = []
    for _ in range(3):  # the burst
        async with api.get("/api/v1/agents") as resp:
            statuses.append(resp.status)
    async with api.get("/api/v1/agents") as resp:
        assert resp.status == 429 and resp.content_type == PROBLEM, await resp.text()
        assert (await resp.json())["error"] == "RateLimited"
        assert int(resp.headers["Retry-After"]) >= 1
    assert statuses == [200, 200, 200]
    async with api.get("/healthz") as resp:  # probes are never limited
        assert resp.status == 200
    # Another token has its own bucket (a wrong one: refused by auth, not by the limit).
    async with api.get("/api/v1/agents", headers={"Authorization": "Bearer other"}) as resp:
        assert resp.status == 401


async def test_each_request_is_one_json_access_log_line_without_the_token(
    api: TestClient[Any, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.access")
    async with api.get("/api/v1/agents", headers={"X-Correlation-ID": "trace-me"}) as resp:
        assert resp.status == 200
    async with api.get("/api/v1/runs/0123456789abcdef0123456789abcdef") as resp:
        assert resp.status == 404
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    first, second = lines[-2:]
    assert (first["method"], first["path"], first["status"], first["correlation_id"]) == (
        "GET", "/api/v1/agents", 200, "trace-me",
    )  # fmt: skip
    assert second["status"] == 404 and second["latency_ms"] >= 0
    assert first["token"] and TOKEN not in json.dumps(lines)  # a fingerprint, never the token

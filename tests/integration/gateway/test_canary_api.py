"""Canary metrics over the API and the CLI: what the canary processor put in
``af_canary_metrics`` (the KV contract, written here as the processor writes it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from mesh import names
from streams.processors.rollup import MinuteBucket, Sample, bucket_key, summarize
from tests.helpers import unique

from .conftest import PROBLEM, agent_factory, ok

NOW = datetime.now(UTC)
MINUTE = int(NOW.timestamp() // 60)


async def _put(js: JetStreamContext, agent: str, version: str, requests: int, min_samples: int = 20) -> None:
    """The processor's KV entry for ``requests`` runs of 10..(10+requests) ms, a third failed."""
    bucket = MinuteBucket()
    for i in range(requests):
        bucket.apply(Sample(agent, version, MINUTE, i % 3 == 0, 10.0 + i, 2.0), i + 1)
    table = {bucket_key(agent, version, MINUTE): bucket}
    metrics = summarize(
        agent, version, lambda m: table.get(bucket_key(agent, version, m)), MINUTE, min_samples, NOW, "USD"
    )
    kv = await js.key_value(names.BUCKET_CANARY_METRICS)
    await kv.put(names.version_key(agent, version), metrics.model_dump_json().encode())


async def test_metrics_of_every_version_or_one_version_and_window(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    agent = unique("shop")
    await _put(mesh_js, agent, "1.0.0", 90)
    await _put(mesh_js, agent, "1.1.0-rc.1+b.7", 5)
    await _put(mesh_js, unique("other"), "1.0.0", 50)
    resp = await api.get(f"/api/v1/canary/{agent}/metrics")
    assert resp.status == 200
    body = await resp.json()
    assert body["agent"] == agent
    assert [v["version"] for v in body["versions"]] == ["1.0.0", "1.1.0-rc.1+b.7"]
    stable, rc = body["versions"]
    assert set(stable["windows"]) == {"1m", "5m", "15m", "1h"}
    hour = stable["windows"]["1h"]
    assert (hour["status"], hour["requests"], hour["errors"], hour["error_rate"]) == ("ok", 90, 30, 30 / 90)
    assert abs(hour["p50_ms"] - 54.0) <= 0.01 * 54.0
    assert rc["windows"]["1h"]["status"] == "insufficient data" and rc["windows"]["1h"]["p99_ms"] is None

    resp = await api.get(
        f"/api/v1/canary/{agent}/metrics", params={"version": "1.1.0-rc.1+b.7", "window": "5m"}
    )
    assert resp.status == 200
    (only,) = (await resp.json())["versions"]
    assert only["version"] == "1.1.0-rc.1+b.7" and list(only["windows"]) == ["5m"]

    table = ok(await agent_factory(api, "canary", "metrics", agent))
    assert "insufficient data (< 20 requests)" in table and "33.3%" in table
    data = json.loads(
        ok(await agent_factory(api, "canary", "metrics", agent, "--window", "1h", "-o", "json"))
    )
    assert [list(v["windows"]) for v in data["versions"]] == [["1h"], ["1h"]]


async def test_an_agent_or_version_without_metrics_is_a_404_that_says_why(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    agent = unique("quiet")
    resp = await api.get(f"/api/v1/canary/{agent}/metrics")
    assert resp.status == 404 and resp.content_type == PROBLEM
    assert "no canary metrics for" in (await resp.json())["detail"]
    await _put(mesh_js, agent, "1.0.0", 1)
    resp = await api.get(f"/api/v1/canary/{agent}/metrics", params={"version": "2.0.0"})
    assert resp.status == 404 and f"{agent} version 2.0.0" in (await resp.json())["detail"]
    result = await agent_factory(api, "canary", "metrics", unique("never"))
    assert result.exit_code == 1 and "no canary metrics for" in result.output


async def test_values_that_cannot_name_an_agent_version_or_window_are_400(api: TestClient[Any, Any]) -> None:
    for path, params in [
        ("/api/v1/canary/Not_An_Agent/metrics", {}),
        ("/api/v1/canary/shop/metrics", {"window": "2m"}),
        ("/api/v1/canary/shop/metrics", {"version": "1.0 beta"}),
    ]:
        resp = await api.get(path, params=params)
        assert resp.status == 400 and resp.content_type == PROBLEM, (path, params)
    result = await agent_factory(api, "canary", "metrics", "shop", "--window", "2m")
    assert result.exit_code == 2 and "2m" in result.output  # click refuses it before any request

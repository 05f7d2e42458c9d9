"""Helpers of the install tests: a gateway that can start dedicated workers, and
publishing, installing, acting and running through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from agents.hub import Hub, Published
from agents.registry import Registry, load_agent
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from tests.helpers import eventually
from tests.integration.gateway.conftest import follow


def gateway_for(tmp_path: Path) -> Gateway:
    parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2,
                  worker=InProcessWorker(concurrency=4, idle_poll_s=0.2, drain_timeout_s=5))  # fmt: skip
    settings = Settings(data_dir=tmp_path / "af", drain_timeout_s=5)
    return Gateway(settings, Registry([load_agent("agents.examples:NoOp")]), parts)


async def publish(gateway: Gateway, archive: bytes, name: str, version: str) -> None:
    assert gateway.pool is not None and gateway.nc is not None and gateway.js is not None
    hub = Hub(gateway.pool, gateway.nc, gateway.js)
    await hub.publish(archive, Published(name=name, version=version), tenant=None, publisher="test")


async def install(api: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    op: dict[str, Any] = await follow(api, await api.post("/api/v1/hub/installs", json=body), timeout=90)
    return op


async def act(api: TestClient[Any, Any], name: str, action: str, version: str) -> dict[str, Any]:
    body = {"action": action, "version": version}
    op: dict[str, Any] = await follow(
        api, await api.post(f"/api/v1/agents/{name}/lifecycle", json=body), timeout=60
    )
    return op


async def runs(api: TestClient[Any, Any], name: str, n: int) -> list[dict[str, Any]]:
    ids = []
    for i in range(n):
        resp = await api.post(f"/api/v1/agents/{name}/runs", json={"input": {"kwh": i}})
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["run_id"])

    async def done() -> Any:
        views = [await (await api.get(f"/api/v1/runs/{r}")).json() for r in ids]
        return views if all(v["status"] == "succeeded" for v in views) else None

    views: list[dict[str, Any]] = await eventually(done, 30, f"{n} runs of {name} succeeded")
    return views

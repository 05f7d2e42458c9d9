"""Dedicated mode with real processes: an agent's own workers are started by its
deploy, serve its tasks while the shared pool leaves them alone, and are
stopped by its retirement; a worker that keeps dying fails the version with
its last words; the supervisor restarts a killed worker with backoff and
gives up after its limit."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.lifecycle.dedicated import DedicatedWorkers, RestartPolicy
from agents.registry import Registry, load_agent
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from mesh.embedded import pid_alive
from tests.helpers import eventually

from ..gateway.conftest import TOKEN, ApiTestServer, follow

MODULE = "tests.integration.lifecycle.dedicated_agents"


@pytest.fixture
async def gateway_for(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, tmp_path: Any
) -> AsyncIterator[Any]:
    """A gateway (API, recorders, a shared in-process worker) that loads one agent
    of ``dedicated_agents`` and can start its dedicated workers."""
    opened: list[tuple[Gateway, TestClient[Any, Any]]] = []

    async def start(name: str) -> TestClient[Any, Any]:
        spec = f"{MODULE}:{name}"
        parts = Parts(maintenance=False, scheduler=False, serve=False, poll_s=0.2,
                      worker=InProcessWorker(concurrency=8, idle_poll_s=0.2, drain_timeout_s=5))  # fmt: skip
        settings = Settings(agents=spec, data_dir=tmp_path / "af", drain_timeout_s=5)
        gateway = Gateway(settings, Registry([load_agent(spec)]), parts)
        await gateway.start(nc, pool, token=TOKEN)
        assert gateway.app is not None
        client = TestClient(ApiTestServer(gateway.app))
        await client.start_server()
        client.session.headers["Authorization"] = f"Bearer {TOKEN}"
        opened.append((gateway, client))
        return client

    yield start
    for gateway, client in opened:
        await client.close()
        await gateway.stop()


async def _act(api: TestClient[Any, Any], key: str, **body: Any) -> dict[str, Any]:
    op = await follow(api, await api.post(f"/api/v1/agents/{key}/lifecycle", json=body), timeout=90)
    result: dict[str, Any] = op["result"]
    return result


async def test_a_dedicated_agent_is_started_drained_and_retired_through_the_api(gateway_for: Any) -> None:
    api = await gateway_for("DedicatedEcho")
    deployed = await _act(api, "ded-echo", action="deploy")
    assert deployed["state"] == "running", deployed
    health = await (await api.get("/api/v1/agents/ded-echo/health")).json()
    own = [w for w in health["workers"] if w["role"] == "dedicated"]
    assert len(own) == 2 and health["gate"] == "open to dedicated workers only"
    assert health["versions"][0]["mode"] == "dedicated"
    pids = {int(w["worker"].rsplit("/", 1)[1]) for w in own}
    assert os.getpid() not in pids and all(pid_alive(pid) for pid in pids)

    runs = [
        (await (await api.post("/api/v1/agents/ded-echo/runs", json={"input": {"i": i}})).json())["run_id"]
        for i in range(20)
    ]

    async def results() -> list[dict[str, Any]] | None:
        views = [await (await api.get(f"/api/v1/runs/{run}")).json() for run in runs]
        done = all(v["status"] == "succeeded" for v in views)
        return views if done else None

    ran = await eventually(results, 20, "every task ran")
    assert sorted(v["result"]["i"] for v in ran) == list(range(20))
    # Its own workers ran them all (each in a sandboxed child of theirs); the shared
    # worker in this (the test's) process took none.
    assert {v["worker"].split("@")[0] for v in ran} <= {"dedicated-ded-echo-0", "dedicated-ded-echo-1"}
    assert os.getpid() not in {v["result"]["pid"] for v in ran}

    drained = await _act(api, "ded-echo", action="drain", wait=True, drain_timeout_s=10)
    assert drained["state"] == "draining" and drained["detail"].startswith("drained")
    retired = await _act(api, "ded-echo", action="retire")
    assert retired["state"] == "retired"
    await eventually(lambda: not any(pid_alive(pid) for pid in pids), 15, "its workers stopped")


async def test_a_dedicated_worker_that_dies_at_start_fails_the_deploy_with_its_last_words(
    gateway_for: Any,
) -> None:
    api = await gateway_for("CrashesInItsOwnWorker")
    out = await _act(api, "ded-crash", action="deploy")
    assert out["state"] == "failed"
    assert "exited with code 3" in out["detail"] and "/models/crash.bin not found" in out["detail"]
    assert [t["to_state"] for t in out["transitions"]][-2:] == ["deploying", "failed"]


def _sleeper(agent: str, index: int, package_dir: Path | None) -> list[str]:
    return [sys.executable, "-c", "import time; time.sleep(300)"]


def _crasher(agent: str, index: int, package_dir: Path | None) -> list[str]:
    return [sys.executable, "-c", "import sys; sys.stderr.write('bad config line 7\\n'); sys.exit(5)"]


async def test_the_supervisor_restarts_a_killed_worker_and_gives_up_on_one_that_keeps_dying() -> None:
    failed: list[tuple[str, str]] = []

    async def on_failed(agent: str, why: str) -> None:
        failed.append((agent, why))

    fast = RestartPolicy(base_s=0.05, cap_s=0.2, max_restarts=3, window_s=60)
    workers = DedicatedWorkers(_sleeper, on_failed, policy=fast, stop_grace_s=2)
    try:
        await workers.start("a", 2)
        first = workers.pids("a")
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)  # kill -9 one of them
        await eventually(lambda: len(workers.pids("a")) == 2 and first[0] not in workers.pids("a"), 5,
                         "the killed worker restarted")  # fmt: skip
        assert first[1] in workers.pids("a") and workers.crashes["a"] and failed == []
        await workers.stop("a")
        assert not any(pid_alive(pid) for pid in first + workers.pids("a"))

        crashing = DedicatedWorkers(_crasher, on_failed, policy=fast)
        await crashing.start("b", 1)
        await eventually(lambda: failed, 10, "the supervisor gave up")
        [(agent, why)] = failed
        assert agent == "b" and why.startswith("crashed 4 times") and "bad config line 7" in why
        assert "exited with code 5" in why and crashing.pids("b") == []
    finally:
        await workers.close()


async def test_an_installed_versions_workers_start_and_restart_in_its_directory(tmp_path: Path) -> None:
    said = tmp_path / "cwd.txt"
    package = tmp_path / "packages" / "meter" / "2.0.0"
    package.mkdir(parents=True)
    script = "import os, sys, time; open(sys.argv[1], 'a').write(os.getcwd() + '\\n'); time.sleep(300)"
    asked: list[tuple[str, Path | None]] = []

    def command(unit: str, index: int, package_dir: Path | None) -> list[str]:
        asked.append((unit, package_dir))
        return [sys.executable, "-c", script, str(said)]

    async def on_failed(unit: str, why: str) -> None:
        raise AssertionError(why)

    workers = DedicatedWorkers(
        command, on_failed, policy=RestartPolicy(base_s=0.05, cap_s=0.2), stop_grace_s=2
    )
    try:
        await workers.start("meter@2.0.0", 1, package)
        [pid] = await eventually(lambda: said.exists() and workers.pids("meter@2.0.0"), 20, "it started")
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda: said.read_text().count("\n") == 2, 20, "it restarted")
        assert said.read_text().splitlines() == [str(package), str(package)]
        assert asked == [("meter@2.0.0", package)] * 2
    finally:
        await workers.close()


def test_restarts_back_off_and_give_up_past_the_limit_in_the_window() -> None:
    policy = RestartPolicy(base_s=1, cap_s=30, max_restarts=5, window_s=300)
    assert [policy.pause(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert not policy.gives_up([0, 1, 2, 3, 4], now=5)
    assert policy.gives_up([0, 1, 2, 3, 4, 5], now=6)
    assert not policy.gives_up([0, 1, 2, 3, 4, 400], now=401)  # the old ones left the window

"""Hot reload in real worker processes (``agent-factory worker``): a config change reaches
the next run, and a worker that missed a change while nats-server was away converges
after it reconnects and says at which revision."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js import JetStreamContext

from mesh.embedded import NatsServer, find_free_port
from mesh.provision import provision
from mesh.queue.agent_config import ConfigRecord, put_record
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually, terminate, unique

AGENTS = "tests.integration.config.config_agents:Configured"


@contextmanager
def worker_process(nats_url: str, agent: str, data_dir: Path, sandbox: bool = False) -> Iterator[Path]:
    """``agent-factory -v worker`` serving ``agent`` (a Configured agent); yields its log file."""
    log = data_dir / f"{agent}.log"
    env = {**os.environ, "AF_NATS_URL": nats_url, "AF_AGENTS": AGENTS, "AF_TEST_CONFIG_AGENT": agent,
           "AF_DATA_DIR": str(data_dir)}  # fmt: skip
    command = [sys.executable, "-m", "gateway.cli", "-v", "--data-dir", str(data_dir), "worker",
               "--name", agent, "--agents", agent, "--sandbox" if sandbox else "--no-sandbox",
               "--drain-timeout", "2"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path.cwd())
    try:
        yield log
    finally:
        terminate(proc)


def _said(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


async def _converged(log: Path, revision: int | None = None, timeout: float = 20.0) -> None:
    text = "config: last converged at revision" + (f" {revision}" if revision is not None else "")
    await eventually(lambda: _said(log, text), timeout, f"{text!r} in {log}")


async def _factor(js: JetStreamContext, queue: TaskQueue, agent: str, tenant: str = "default") -> Any:
    queued = await queue.enqueue(TaskSpec(agent=agent, input={"value": 1.0}, tenant=tenant))

    async def done() -> Any:
        state = await get_run(js, queued.run_id)
        return state if state is not None and state.status == RunStatus.SUCCEEDED else None

    state = await eventually(done, 15, f"run {queued.run_id} of {agent} succeeded")
    return state.result["factor"]


def _record(agent: str, version: int, factor: float) -> ConfigRecord:
    return ConfigRecord(agent=agent, version=version, config={"values": {"factor": factor}})


async def _metric(data_dir: Path, name: str) -> float | None:
    """``name``'s value in the worker's /metrics (served where its data dir says)."""
    targets = list((data_dir / "worker-metrics").glob("*.json"))
    if not targets:
        return None
    url = json.loads(targets[0].read_text())["url"]
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


@pytest.mark.parametrize("sandbox", [False, True], ids=["in-process", "sandboxed"])
async def test_a_change_reaches_a_worker_process_and_its_next_run_reads_it(
    nats_url: str, mesh_js: JetStreamContext, queue: TaskQueue, tmp_path: Path, sandbox: bool
) -> None:
    agent = unique("hot")
    with worker_process(nats_url, agent, tmp_path, sandbox) as log:
        await _converged(log)
        assert await _factor(mesh_js, queue, agent) == 1.0  # nothing set: the model's default
        revision = await put_record(mesh_js, _record(agent, 1, 3.0))
        assert revision is not None
        assert await _factor(mesh_js, queue, agent) == 3.0
        await put_record(mesh_js, _record(agent, 2, 4.5))
        assert await _factor(mesh_js, queue, agent) == 4.5
        stale = await put_record(mesh_js, _record(agent, 1, 99.0))  # an older version never wins
        assert stale is None and await _factor(mesh_js, queue, agent) == 4.5
        assert await eventually(lambda: _metric(tmp_path, "af_config_converged_timestamp_seconds"), 10)


def _server(store: Path, port: int) -> NatsServer:
    return NatsServer(store, port=port, die_with_parent=True)


async def test_a_worker_that_missed_a_change_while_disconnected_converges_after_reconnect(
    tmp_path: Path,
) -> None:
    """The change is written on the same store through another port while the worker's
    server is down, so the worker's subscription cannot have seen it: only the revision
    check on reconnect (or the periodic reconcile, every 30 s) can bring it."""
    store, port = tmp_path / "nats", find_free_port()
    url, agent = f"nats://127.0.0.1:{port}", "configured"
    server = _server(store, port)
    await asyncio.to_thread(server.start)
    try:
        nc = await connect(url)
        js = await jetstream(nc)
        await provision(js)
        await put_record(js, _record(agent, 1, 2.0))
        queue = TaskQueue(nc, js)
        await queue.start()
        with worker_process(url, agent, tmp_path) as log:
            await _converged(log)
            assert await _factor(js, queue, agent) == 2.0
            await queue.stop()
            await nc.close()
            await asyncio.to_thread(server.stop)  # the worker is cut off

            other = _server(store, find_free_port())  # the same store, another port
            await asyncio.to_thread(other.start)
            side = await connect(other.url)
            revision = await put_record(await jetstream(side), _record(agent, 2, 7.0))
            await side.close()
            await asyncio.to_thread(other.stop)
            assert revision is not None
            assert not _said(log, f"last converged at revision {revision}")

            started = time.monotonic()
            await asyncio.to_thread(server.start)  # the worker's server is back
            await _converged(log, revision, timeout=10)
            took = time.monotonic() - started
            nc = await connect(url)
            js = await jetstream(nc)
            async with TaskQueue(nc, js) as again:
                assert await _factor(js, again, agent) == 7.0
            await nc.close()
        assert took < 10, took
    finally:
        await asyncio.to_thread(server.stop)

"""`agent-factory up --cluster 3`: three embedded nats-servers, R3 streams, a run over HTTP,
and worker pools that come back while a node is down."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path

import nats
import psutil
import pytest

from mesh import names
from mesh.embedded import find_free_port, pid_alive
from tests.helpers import eventually_sync
from tests.integration.gateway.test_up import _start, _state, _stop, cli

FUEL = '{"fuel": "diesel", "quantity": 100, "unit": "L"}'


def test_up_with_a_cluster_of_three_runs_a_task_over_http_on_r3_streams(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port(), "--cluster", "3", "--workers", "1")
    try:
        state = _state(data_dir)
        # Every client is given every node.
        assert len(state["nats_urls"]) == 3 and state["nats_url"] == ",".join(state["nats_urls"])
        assert all((data_dir / "nats-cluster" / f"n{i}" / "jetstream").is_dir() for i in range(3))
        done = cli(data_dir, "run", "fuel-combustion", "--wait", "-o", "json", "--input", FUEL)
        view = json.loads(done.stdout)
        assert view["status"] == "succeeded"
        assert view["result"]["co2e_kg"] == pytest.approx(270.583, abs=0.01)
        replicas = asyncio.run(_replicas(state["nats_urls"][2]))
        assert replicas == {name: 3 for name in replicas} and names.STREAM_TASKS in replicas
        assert names.kv_stream(names.BUCKET_RUNS) in replicas

        # Node n1 dies (kill -9), then the worker pool crashes. `up` restarts the
        # pool, which must connect to a node still there and serve runs (given
        # one node's URL, n1's, it could not: the run would never finish).
        node = int((data_dir / "nats-cluster" / "n1" / "nats-server.pid").read_text())
        os.kill(node, signal.SIGKILL)
        eventually_sync(lambda: not pid_alive(node), 10, "node n1 gone")
        crashed = _worker_pools(proc)
        assert len(crashed) == 1
        os.kill(crashed[0], signal.SIGKILL)
        eventually_sync(lambda: set(_worker_pools(proc)) - set(crashed), 30, "the pool restarted")
        again = cli(data_dir, "run", "fuel-combustion", "--wait", "-o", "json", "--input", FUEL)
        assert json.loads(again.stdout)["status"] == "succeeded"
    finally:
        _stop(proc, data_dir)  # exit code 0, and no nats-server or postgres left on the data dir


def _worker_pools(up: subprocess.Popen[str]) -> list[int]:
    """The live worker pools of `up` (a killed one is a zombie until `up` reaps it)."""
    pools = []
    for child in psutil.Process(up.pid).children():
        try:
            if "worker" in " ".join(child.cmdline()):
                pools.append(child.pid)
        except psutil.Error:
            continue
    return pools


async def _replicas(url: str) -> dict[str, int]:
    """Every stream's replica count, asked of the last node."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return {info.config.name or "": info.config.num_replicas or 1 for info in await js.streams_info()}
    finally:
        await nc.close()

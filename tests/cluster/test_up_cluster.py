"""`agent-factory up --cluster 3`: three embedded nats-servers, R3 streams, a run over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import pytest

from mesh import names
from mesh.embedded import find_free_port
from tests.integration.gateway.test_up import _start, _state, _stop, cli


def test_up_with_a_cluster_of_three_runs_a_task_over_http_on_r3_streams(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port(), "--cluster", "3", "--workers", "2")
    try:
        state = _state(data_dir)
        assert len(state["nats_urls"]) == 3 and state["nats_url"] == state["nats_urls"][0]
        assert all((data_dir / "nats-cluster" / f"n{i}" / "jetstream").is_dir() for i in range(3))
        done = cli(data_dir, "run", "fuel-combustion", "--wait", "-o", "json",
                   "--input", '{"fuel": "diesel", "quantity": 100, "unit": "L"}')  # fmt: skip
        view = json.loads(done.stdout)
        assert view["status"] == "succeeded"
        assert view["result"]["co2e_kg"] == pytest.approx(270.583, abs=0.01)
        replicas = asyncio.run(_replicas(state["nats_urls"][2]))
        assert replicas == {name: 3 for name in replicas} and names.STREAM_TASKS in replicas
        assert names.kv_stream(names.BUCKET_RUNS) in replicas
    finally:
        _stop(proc, data_dir)  # exit code 0, and no nats-server or postgres left on the data dir


async def _replicas(url: str) -> dict[str, int]:
    """Every stream's replica count, asked of the last node."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        return {info.config.name or "": info.config.num_replicas or 1 for info in await js.streams_info()}
    finally:
        await nc.close()

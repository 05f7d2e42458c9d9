"""The breaker with workers in processes of their own: both stop taking a failing agent's
tasks within 1 s of the finished event that crosses the threshold; another agent flows."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import IO

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.envelope import Priority
from mesh.queue.producer import TaskQueue, TaskSpec
from tests.helpers import eventually
from tests.integration.processors.breaker_fleet import breaker_processor, publish_outcome, window_calls

WORKER = Path(__file__).with_name("breaker_worker.py")
NAMES = ("p1", "p2")


def spawn(url: str, name: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A worker process serving flaky and steady."""
    command = [sys.executable, str(WORKER), url, name, "flaky", "steady"]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)


async def test_two_worker_processes_stop_taking_a_failing_agent_within_1s_while_another_flows(
    own_nats: NatsServer, own_nc: Client, own_js: JetStreamContext, tmp_path: Path
) -> None:
    ready: set[str] = set()
    stopped_at: dict[str, float] = {}  # worker -> when its announcement arrived here
    started: Counter[str] = Counter()

    async def on_ready(msg: Msg) -> None:
        ready.add(msg.subject.rsplit(".", 1)[1])

    async def on_lanes(msg: Msg) -> None:
        agent, what = msg.data.decode().split()
        if agent == "flaky" and what == "stopped":
            stopped_at.setdefault(msg.subject.rsplit(".", 1)[1], time.perf_counter())

    async def on_start(msg: Msg) -> None:
        started[msg.subject.rsplit(".", 1)[1]] += 1

    await own_nc.subscribe("test.ready.*", cb=on_ready)
    await own_nc.subscribe("test.lanes.*", cb=on_lanes)
    await own_nc.subscribe("test.started.*", cb=on_start)
    async with breaker_processor(own_nats.url, open_s=30) as (app, _):
        logs = [(tmp_path / f"{n}.log").open("wb") for n in NAMES]
        procs = [spawn(own_nats.url, n, log) for n, log in zip(NAMES, logs, strict=True)]
        try:
            await eventually(lambda: ready == set(NAMES), 30, "both worker processes ready")
            await publish_outcome(own_js, "flaky", 0, failed=False)
            for i in range(1, 4):
                await publish_outcome(own_js, "flaky", i, failed=True)
            await eventually(lambda: window_calls(app, "flaky") == 4, 30, "4 calls in the window")
            assert not stopped_at

            t0 = time.perf_counter()
            await publish_outcome(own_js, "flaky", 4, failed=True)  # 4 of 5 failed: over 50 %
            await eventually(lambda: set(stopped_at) == set(NAMES), 5, "both processes stopped", every=0.002)
            slowest = max(stopped_at.values()) - t0
            assert slowest < 1.0, f"{slowest:.3f} s from the crossing event to both processes stopped"

            async with TaskQueue(own_nc, own_js) as queue:
                for i in range(5):
                    await queue.enqueue(TaskSpec("flaky", {"i": i}, priority=Priority.NORMAL))
                    await queue.enqueue(TaskSpec("steady", {"i": i}, priority=Priority.NORMAL))
                await eventually(lambda: started["steady"] == 5, 15, "the other agent's tasks ran")
            assert started["flaky"] == 0
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                assert proc.wait(timeout=30) == 0
            for log in logs:
                log.close()

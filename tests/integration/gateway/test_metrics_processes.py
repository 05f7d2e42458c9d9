"""The gateway's /metrics under a real `up` tells what its worker processes did: every pool's
counts, each once, and gauges that follow the state (issue 19, B.7 "Metrics that lie")."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.embedded import find_free_port
from tests.helpers import DOUBLE_AGENT_MODULE
from tests.integration.gateway.test_up import _start, _state, _stop

RUNS = 12
SUCCEEDED = {"agent": "double", "outcome": "succeeded"}


class _Gateway:
    def __init__(self, data_dir: Path) -> None:
        state = _state(data_dir)
        self.url, self.token = state["api_url"], state["token"]

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return str(response.read().decode())


def _samples(text: str, name: str, **labels: str) -> dict[str, float]:
    """The sum of ``name``'s samples matching ``labels``, by their ``worker`` label ("" for the
    gateway's own)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                worker = s.labels.get("worker", "")
                found[worker] = found.get(worker, 0.0) + s.value
    return found


def _poll(
    read: Callable[[], float | None], until: Callable[[float], bool], seconds: float, what: str
) -> float:
    deadline = time.monotonic() + seconds
    while True:
        value = read()
        if value is not None and until(value):
            return value
        assert time.monotonic() < deadline, f"{what}: {value} after {seconds} s"
        time.sleep(0.2)


@pytest.mark.slow
def test_gateway_metrics_count_every_worker_process_run_once_and_the_dlq_gauge_follows_a_purge(
    tmp_path: Path,
) -> None:
    (tmp_path / "my_agents.py").write_text(DOUBLE_AGENT_MODULE)
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port(), "--workers", "2", "--agent", "my_agents:Double",
                  env={"PYTHONPATH": str(tmp_path)})  # fmt: skip
    try:
        api = _Gateway(data_dir)

        def pools_up() -> float:
            # The stream processors are merged too (worker="processor-<name>"): pools only here.
            up = _samples(api.metrics(), "af_worker_metrics_up")
            return sum(v for name, v in up.items() if name.startswith("worker-"))

        _poll(pools_up, lambda n: n == 2, 60, "worker pools on the gateway's /metrics")
        run_ids = [
            api.call("POST", "/api/v1/agents/double/runs", {"input": {"value": i}})["run_id"]
            for i in range(RUNS)
        ]

        def succeeded() -> float:
            return sum(api.call("GET", f"/api/v1/runs/{r}")["status"] == "succeeded" for r in run_ids)

        _poll(succeeded, lambda n: n == RUNS, 60, "runs succeeded")

        def completed() -> float:
            return sum(_samples(api.metrics(), "af_tasks_finished_total", **SUCCEEDED).values())

        # Every run has finished: a count that reaches RUNS must stop there (doubled, it passes it).
        assert _poll(completed, lambda n: n >= RUNS, 30, "af_tasks_finished_total") == RUNS
        text = api.metrics()
        by_process = _samples(text, "af_tasks_finished_total", **SUCCEEDED)
        assert by_process.get("", 0.0) == 0.0 and set(by_process) - {""} <= {"worker-0", "worker-1"}
        enqueued = _samples(text, "af_tasks_enqueued_total", agent="double")
        assert enqueued[""] == sum(enqueued.values()) == RUNS  # by the gateway
        types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types)), "a family exposed twice"

        # A gauge follows the state: a dead letter, then none after the purge.
        api.call("POST", "/api/v1/agents/double/runs", {"input": {"value": -1}})

        def dlq_size() -> float | None:
            return _samples(api.metrics(), "af_dlq_size", agent="double").get("")

        _poll(dlq_size, lambda n: n == 1, 30, "af_dlq_size after a dead letter")

        def dead_lettered() -> float:
            failed = _samples(api.metrics(), "af_tasks_finished_total", agent="double", outcome="failed")
            return sum(failed.values())

        assert _poll(dead_lettered, lambda n: n >= 1, 30, "af_tasks_finished_total failed") == 1
        assert api.call("POST", "/api/v1/queue/dlq/purge", {"agent": "double"})["purged"] == 1
        _poll(dlq_size, lambda n: n == 0, 30, "af_dlq_size after the purge")
    finally:
        _stop(proc, data_dir)

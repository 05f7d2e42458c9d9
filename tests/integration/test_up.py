"""`agent-factory up` as a user runs it: start, run a task with the CLI, Ctrl-C, start again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from mesh.embedded import find_free_port

CLI = [sys.executable, "-m", "gateway.cli"]


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60, check=check, env=_env(),
    )  # fmt: skip


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AF_")}
    return env


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "up", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        state = _state(data_dir)
        if state.get("pid") == proc.pid and state.get("api_url"):
            return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail("up did not become ready in 60 s")


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data_dir / "state.json").read_text()))
    except (OSError, ValueError):
        return {}


def _children_of(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd and ("nats-server" in cmd or "postgres" in cmd):
            found.append(p)
    return found


def _stop(proc: subprocess.Popen[str], data_dir: Path) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while _children_of(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children_of(data_dir) == []


@pytest.mark.slow
def test_up_runs_a_task_stops_cleanly_and_restarts_with_data_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    port = find_free_port()
    proc = _start(data_dir, port)
    try:
        done = cli(data_dir, "run", "fuel-combustion", "--wait", "-o", "json",
                   "--input", '{"fuel": "diesel", "quantity": 100, "unit": "L"}')  # fmt: skip
        view = json.loads(done.stdout)
        assert view["status"] == "succeeded"
        assert view["result"]["co2e_kg"] == pytest.approx(270.583, abs=0.01)
        agents = json.loads(cli(data_dir, "status", "-o", "json").stdout)["agents"]
        assert {a["key"] for a in agents} >= {"fuel-combustion", "purchased-electricity"}
        table = cli(data_dir, "status").stdout
        assert "fuel-combustion" in table and "serving" in table
        first_nats = _state(data_dir)["nats_url"]
    finally:
        _stop(proc, data_dir)

    proc = _start(data_dir, port)
    try:
        assert _state(data_dir)["nats_url"] == first_nats
        again = json.loads(cli(data_dir, "get", view["run_id"], "-o", "json").stdout)
        assert again["status"] == "succeeded"
        assert again["result"]["co2e_kg"] == view["result"]["co2e_kg"]
        bad = cli(data_dir, "run", "fuel-combustion", "--input", '{"fuel": "x"}', check=False)
        assert bad.returncode == 1
        assert "Traceback" not in bad.stderr and "unknown fuel" in bad.stderr
    finally:
        _stop(proc, data_dir)


def test_cli_without_a_running_gateway_says_what_to_do(tmp_path: Path) -> None:
    done = cli(tmp_path, "status", check=False)
    assert done.returncode == 1
    assert "agent-factory up" in done.stderr and "Traceback" not in done.stderr

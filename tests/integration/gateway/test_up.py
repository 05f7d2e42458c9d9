"""`agent-factory up` as a user runs it: start, run a task with the CLI, Ctrl-C, start again;
a stop is bounded and can be forced, a data dir has one `up`, and nothing outlives `up`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import nats
import psutil
import pytest

from agents.registry import Registry
from agents.store.embedded import EmbeddedPostgres
from gateway.app import Gateway
from gateway.settings import Settings
from gateway.up import Platform
from mesh import names
from mesh.embedded import NatsServer, end_process, find_free_port, pid_alive
from mesh.queue.maintenance import QueueMaintenance
from mesh.schedules.scheduler import Scheduler
from tests.helpers import DOUBLE_AGENT_MODULE, eventually_sync

CLI = [sys.executable, "-m", "gateway.cli"]


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60, check=check, env=_env(),
    )  # fmt: skip


def _env() -> dict[str, str]:
    # As a user runs it: none of the test session's settings, Faust's data dir included
    # (with APP_DATADIR set, a processor under `up` never used <data dir>/processors).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AF_") and k != "APP_DATADIR"}
    return env


def _start(data_dir: Path, port: int, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`up` in its own session (signals reach it only), its output in ``up.log`` beside the data dir."""
    log = data_dir.parent / "up.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [*CLI, "--data-dir", str(data_dir), "up", "--port", str(port), *args],
            stdout=out, stderr=subprocess.STDOUT, text=True, env={**_env(), **(env or {})},
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        state = _state(data_dir)
        if state.get("pid") == proc.pid and state.get("api_url"):
            return proc
        time.sleep(0.1)
    proc.kill()
    pytest.fail("up did not become ready in 60 s")


def _output(data_dir: Path) -> str:
    return (data_dir.parent / "up.log").read_text()


def _state(data_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((data_dir / names.STATE_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _children_of(data_dir: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd and ("nats-server" in cmd or "postgres" in cmd):
            found.append(p)
    return found


def _servers_and_workers(proc: subprocess.Popen[str], data_dir: Path, workers: int = 1) -> list[int]:
    """The pids of the nats-server and the postmaster on ``data_dir``, and of `up`'s
    ``workers`` worker processes, once they are all there: `up` writes its state (what
    :func:`_start` waits for) as soon as its API serves, then starts its workers."""
    deadline = time.monotonic() + 30
    while True:
        found = [p.pid for p in psutil.Process(proc.pid).children() if "worker" in " ".join(p.cmdline())]
        if len(found) >= workers or time.monotonic() > deadline:
            return sorted({p.pid for p in _children_of(data_dir)} | set(found))
        time.sleep(0.05)


def _all_gone(pids: list[int]) -> Callable[[], bool]:
    return lambda: not any(pid_alive(pid) for pid in pids)


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
        # The embedded NATS wants the credentials of state.json (mode 0600); the banner hides them.
        assert (data_dir / names.STATE_FILE).stat().st_mode & 0o077 == 0
        user, password = first_nats.split("://")[1].split("@")[0].split(":")
        assert password and password not in _output(data_dir)
        anonymous = asyncio.run(_connects(first_nats.replace(f"{user}:{password}@", "")))
        assert "Authorization Violation" in anonymous
        assert asyncio.run(_connects(first_nats)) == "ok"
    finally:
        _stop(proc, data_dir)

    # Started again with an agent of the user's own, from a module outside the platform.
    (tmp_path / "my_agents.py").write_text(DOUBLE_AGENT_MODULE)
    proc = _start(data_dir, port, "--agent", "my_agents:Double", env={"PYTHONPATH": str(tmp_path)})
    try:
        assert _state(data_dir)["nats_url"] != first_nats  # fresh credentials on every start
        doubled = json.loads(
            cli(data_dir, "run", "double", "--input", '{"value": 21}', "--wait", "-o", "json").stdout
        )
        assert doubled["status"] == "succeeded" and doubled["result"] == {"value": 42.0}
        refused = cli(
            data_dir, "run", "double", "--input", '{"value": -1}', "--wait", "-o", "json", check=False
        )
        assert (
            '"attempts": 1' in refused.stdout and "negative values" in refused.stdout
        )  # PermanentError: no retry
        assert _state(data_dir)["nats_port"] == int(first_nats.rsplit(":", 1)[1])
        again = json.loads(cli(data_dir, "get", view["run_id"], "-o", "json").stdout)
        assert again["status"] == "succeeded"
        assert again["result"]["co2e_kg"] == view["result"]["co2e_kg"]
        bad = cli(data_dir, "run", "fuel-combustion", "--input", '{"fuel": "x"}', check=False)
        assert bad.returncode == 1
        assert "Traceback" not in bad.stderr and "unknown fuel" in bad.stderr
    finally:
        _stop(proc, data_dir)


def _processors(proc: subprocess.Popen[str]) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children() if "processors" in " ".join(p.cmdline())]


def _priced(data_dir: Path, n: int) -> dict[str, Any] | None:
    costs = json.loads(cli(data_dir, "costs", "--group-by", "agent", "--agent", "noop", "-o", "json").stdout)
    return costs if costs["executions"] >= n else None


@pytest.mark.slow
def test_up_prices_runs_with_its_metering_processor_and_restarts_a_killed_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port(), env={"AF_PROCESSORS": "metering"})
    try:
        eventually_sync(lambda: "processors metering" in _output(data_dir), 30, "the banner")
        for i in range(2):
            cli(data_dir, "run", "noop", "--input", json.dumps({"echo": i}), "--wait")
        costs = eventually_sync(lambda: _priced(data_dir, 2), 60, "2 runs priced")
        assert costs["executions"] == 2 and costs["total_nano"] > 0
        (first,) = _processors(proc)
        first.kill()  # -9: `up` starts it again, and it resumes from its commits
        eventually_sync(lambda: "processor-metering exited with code -9" in _output(data_dir), 30, "noticed")
        eventually_sync(lambda: [p.pid for p in _processors(proc)] not in ([], [first.pid]), 30, "restarted")
        cli(data_dir, "run", "noop", "--input", '{"echo": 9}', "--wait")
        costs = eventually_sync(lambda: _priced(data_dir, 3), 90, "the third run priced")
        assert costs["executions"] == 3
    finally:
        _stop(proc, data_dir)


async def _connects(url: str) -> str:
    """ "ok", or why nats-py could not connect to ``url``."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    try:
        nc = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=2, error_cb=on_error)
    except Exception as exc:
        return " ".join([*errors, str(exc)])
    await nc.close()
    return "ok"


def test_a_bad_agent_for_up_is_one_clear_line_before_anything_starts(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "--data-dir", str(tmp_path / "af"), "up", "--agent", "no_such_module_zz:Thing"],
        capture_output=True, text=True, timeout=60, env=_env(),
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "cannot import 'no_such_module_zz'" in done.stderr
    assert not (tmp_path / "af" / "nats").exists()  # nothing was started


def test_cli_without_a_running_gateway_says_what_to_do(tmp_path: Path) -> None:
    done = cli(tmp_path, "status", check=False)
    assert done.returncode == 1
    assert "agent-factory up" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_up_promptly_with_no_server_left_and_a_second_up_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port(), "--workers", "0")  # no workers: once a crash
    try:
        second = subprocess.run(  # `up --data-dir D`, as the README writes it
            [*CLI, "up", "--data-dir", str(data_dir), "--port", str(find_free_port())],
            capture_output=True, text=True, timeout=30, env=_env(),
        )  # fmt: skip
        assert second.returncode == 1
        assert f"in use by another `agent-factory up` (pid {proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert _state(data_dir)["pid"] == proc.pid  # the refused one changed nothing
        children = _servers_and_workers(proc, data_dir, workers=0)
        assert len(children) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 0, _output(data_dir)
    eventually_sync(_all_gone(children), 5, "nats-server and PostgreSQL stopped")
    said = _output(data_dir)
    assert "stopped." in said and "failed to stop" not in said and "Traceback" not in said


def test_a_second_ctrl_c_during_a_slow_drain_forces_the_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = _start(data_dir, find_free_port())
    children = _servers_and_workers(proc, data_dir)
    assert len(children) == 3
    [worker] = [p for p in psutil.Process(proc.pid).children() if "worker" in " ".join(p.cmdline())]
    try:
        worker.suspend()  # SIGSTOP: its drain would last drain_timeout_s + 10 s (40 s)
        proc.send_signal(signal.SIGINT)
        eventually_sync(lambda: "draining workers" in _output(data_dir), 15, "up drains")
        proc.send_signal(signal.SIGINT)
        forced_at = time.monotonic()
        code = proc.wait(timeout=30)
        assert time.monotonic() - forced_at < 10, "the second Ctrl-C did not force the stop"
    finally:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()  # a stopped process keeps the SIGTERM its parent's death sends
    assert code == 1
    assert "forcing the stop" in _output(data_dir)
    eventually_sync(_all_gone(children), 5, "worker, nats-server and PostgreSQL killed")


def test_after_kill_9_nothing_is_left_running_and_the_next_up_reclaims_leftovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    port = find_free_port()
    proc = _start(data_dir, port)
    children = _servers_and_workers(proc, data_dir)
    assert len(children) == 3
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        eventually_sync(_all_gone(children), 10, "worker, nats-server and PostgreSQL die with up")
    finally:  # if they did not, this test does not leave them behind either
        for pid in children:
            end_process(pid, 5)

    # Servers left by an `up` that could not take them down with it (an older one):
    # the next `up` stops them rather than start a second nats-server on the store.
    nats = NatsServer(data_dir / "nats")
    nats.start()
    postgres = EmbeddedPostgres(data_dir / "postgres")
    postgres.start()
    leftovers = [nats.pid or 0, postgres.pid or 0]
    try:
        proc = _start(data_dir, port)
        try:
            said = _output(data_dir)
            assert f"stopped nats-server (pid {nats.pid})" in said
            assert f"stopped PostgreSQL (pid {postgres.pid})" in said
            eventually_sync(_all_gone(leftovers), 5, "the leftovers stopped")
            assert len([p for p in _children_of(data_dir) if "nats-server" in p.name()]) == 1
            done = cli(data_dir, "run", "noop", "--wait", "-o", "json", "--input", "{}")
            assert json.loads(done.stdout)["status"] == "succeeded"
        finally:
            _stop(proc, data_dir)
    finally:
        nats.kill()
        postgres.stop()


class _StopIgnoresCancels:
    """A component whose stop() never ends and swallows every cancel (as the dlq-mover's once did)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def stop(self) -> None:
        while not self.release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await self.release.wait()


class _StopFails:
    async def stop(self) -> None:
        raise RuntimeError("broken on the way out")


async def test_a_stop_step_past_its_deadline_is_abandoned_and_the_servers_stop_anyway(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nats = NatsServer(tmp_path / "nats")
    postgres = EmbeddedPostgres(tmp_path / "pg")
    await asyncio.to_thread(nats.start)
    await asyncio.to_thread(postgres.start)
    servers = [nats.pid or 0, postgres.pid or 0]
    hangs = _StopIgnoresCancels()
    platform = Platform(Settings(data_dir=tmp_path), stop_timeout_s=2.0, nats=nats, postgres=postgres)
    platform.gateway = Gateway(platform.settings, Registry(), scheduler=cast(Scheduler, _StopFails()),
                               maintenance=cast(QueueMaintenance, hangs))  # fmt: skip
    try:
        started = time.monotonic()
        stopping = asyncio.create_task(platform.stop())
        done, _ = await asyncio.wait({stopping}, timeout=15)
        assert stopping in done, "stop() waited for a step that never ends"
        assert time.monotonic() - started < 10
        assert platform.abandoned == ["the queue maintenance"]
        said = capsys.readouterr().err
        assert "the scheduler failed to stop: RuntimeError" in said
        assert "the queue maintenance did not stop in 2 s; abandoning it" in said
        assert not any(pid_alive(pid) for pid in servers), "a failed or abandoned step kept a server up"
    finally:
        hangs.release.set()
        await asyncio.to_thread(postgres.stop)
        nats.kill()

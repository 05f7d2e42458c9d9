"""``nats_sync_interval`` (``AF_NATS_SYNC_INTERVAL``) reaches the embedded nats-server,
and a bad value is refused with a clear message (docs/durability.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.settings import Settings
from mesh import names
from mesh.embedded import NatsServer, find_free_port

CLI = [sys.executable, "-m", "gateway.cli"]


def jetstream_config(monitor_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as reply:
        return dict(json.load(reply)["jetstream"]["config"])


@pytest.mark.parametrize(
    ("value", "interval_ns", "always"),
    [("default", 120_000_000_000, False), ("always", 120_000_000_000, True), ("10s", 10_000_000_000, False)],
)
def test_the_sync_interval_reaches_the_server(
    tmp_path: Path, value: str, interval_ns: int, always: bool
) -> None:
    monitor = find_free_port()
    with NatsServer(tmp_path / "nats", sync_interval=value, monitor_port=monitor):
        config = jetstream_config(monitor)
    assert config["sync_interval"] == interval_ns
    assert config.get("sync_always", False) is always


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AF_NATS_SYNC_INTERVAL", "Always")
    assert Settings().nats_sync_interval == "always"
    monkeypatch.setenv("AF_NATS_SYNC_INTERVAL", "1m30s")
    assert Settings().nats_sync_interval == "1m30s"
    monkeypatch.delenv("AF_NATS_SYNC_INTERVAL")
    assert Settings().nats_sync_interval == "default"


@pytest.mark.parametrize("bad", ["soon", "10", "0s", "-1s", "always\n}", ""])
def test_a_bad_sync_interval_is_refused_with_what_is_allowed(bad: str) -> None:
    with pytest.raises(ValidationError, match="not 'default', 'always' or a duration"):
        Settings(nats_sync_interval=bad)
    with pytest.raises(ValueError, match="not 'default', 'always' or a duration"):
        NatsServer(Path("unused"), sync_interval=bad)


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AF_")}, **extra}


def test_up_with_a_bad_sync_interval_says_so_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "--data-dir", str(tmp_path), "up"],
        capture_output=True, text=True, timeout=60, env=_env(AF_NATS_SYNC_INTERVAL="soon"),
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "invalid settings" in done.stderr and "nats_sync_interval" in done.stderr
    assert "'soon' is not 'default', 'always' or a duration" in done.stderr
    assert not (tmp_path / "nats").exists()  # refused before starting anything


@pytest.mark.slow
def test_up_starts_its_nats_server_with_the_sync_interval(tmp_path: Path) -> None:
    data_dir = tmp_path / "af"
    proc = subprocess.Popen(
        [*CLI, "--data-dir", str(data_dir), "up", "--port", str(find_free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(AF_NATS_SYNC_INTERVAL="always"),
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        state: dict[str, Any] = {}
        while state.get("pid") != proc.pid or not state.get("api_url"):
            assert proc.poll() is None, "up exited"
            assert time.monotonic() < deadline, "up did not become ready in 60 s"
            time.sleep(0.1)
            try:
                state = json.loads((data_dir / names.STATE_FILE).read_text())
            except (OSError, ValueError):
                state = {}
        log = (data_dir / "nats" / "nats-server.log").read_text()
        config = data_dir / "nats" / "nats-server.conf"
        assert f"Using configuration file: {config}" in log
        assert 'sync_interval: "always"' in config.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0

"""A taken API port stops `agent-factory up` at once, before any server starts,
with one line that names the port, its holder and a free port to use instead."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ports import PortInUse, bindable
from gateway.settings import Settings
from gateway.up import Platform, lock_data_dir
from mesh import names
from tests.integration.gateway.test_up import CLI, _children_of, _env


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port this test process listens on, as another server would."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield int(server.getsockname()[1])


@pytest.mark.parametrize("how", ["--port", "AF_PORT"])
def test_up_on_a_taken_api_port_fails_at_once_with_one_line_and_starts_nothing(
    tmp_path: Path, taken_port: int, how: str
) -> None:
    data_dir = tmp_path / "af"
    args, env = (["--port", str(taken_port)], {}) if how == "--port" else ([], {"AF_PORT": str(taken_port)})
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "--data-dir", str(data_dir), "up", *args],
        capture_output=True, text=True, timeout=60, env={**_env(), **env},
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"API port {taken_port} on 127.0.0.1 is in use by pid {os.getpid()} (" in lines[0]
    suggested = re.search(r"e\.g\. --port (\d+) \(free now\)", lines[0])
    assert suggested is not None, lines[0]
    assert bindable("127.0.0.1", int(suggested[1]))
    # Before any server: the interpreter's start and imports are all it took (the
    # servers' start alone is ~20 s), and no nats-server or PostgreSQL ran.
    assert took < 10, f"refused after {took:.1f} s"
    assert not (data_dir / "nats").exists() and not (data_dir / "postgres").exists()
    assert _children_of(data_dir) == []
    os.close(lock_data_dir(data_dir))  # the data dir is free for the next `up`


async def test_a_refused_start_lets_the_data_dir_go_and_leaves_its_state_alone(
    tmp_path: Path, taken_port: int
) -> None:
    data_dir = tmp_path / "af"
    data_dir.mkdir()
    state = '{"token": "kept", "nats_port": 4999}'
    (data_dir / names.STATE_FILE).write_text(state)
    platform = Platform(Settings(data_dir=data_dir, port=taken_port), say=False)
    with pytest.raises(PortInUse, match=f"API port {taken_port} "):
        await platform.start()
    await platform.stop()  # what run_up does next
    assert platform.nats is None and platform.postgres is None
    assert (data_dir / names.STATE_FILE).read_text() == state
    os.close(lock_data_dir(data_dir))  # not held by this process any more

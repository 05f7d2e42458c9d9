"""What the template tracks of each child: its slot, its pipes, its clock and
how it ended; and the /proc readings it takes of them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.sandbox.audit import ErrorCategory, InvocationAudit
from agents.sandbox.cgroups import CgroupSlot
from agents.sandbox.config import InvocationRequest
from agents.sandbox.frames import FrameReader
from agents.sandbox.relay import MAX_CALL_FRAME

__all__ = [
    "Capture",
    "Invocation",
    "Slot",
    "audit_of",
    "live_children",
    "private_paths",
    "unstarted_audit",
    "verdict",
    "wchar_of",
    "written_bytes",
]

OUT, ERR, RESULT = range(3)


@dataclass
class Capture:
    """One pipe from the child, kept up to ``cap`` bytes and counted beyond."""

    cap: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0
    open: bool = True

    def feed(self, data: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        self.total += len(data)

    def value(self) -> bytes:
        if self.total <= self.cap:
            return bytes(self.kept)
        return bytes(self.kept) + f"\n[truncated: {self.total - self.cap} more bytes]\n".encode()


@dataclass
class Slot:
    """A uid and a control group (where the host has them) for one child at a time."""

    index: int
    uid: int | None
    cgroup: CgroupSlot | None
    child: Invocation | None = None  # warm (waiting for a request) or running
    warm_failed: bool = False  # its last warm child died before a request: warm it on demand only


@dataclass
class Invocation:
    """A child: warm until ``request`` is set, then running until reaped and swept."""

    slot: Slot
    pid: int
    workdir: str
    captures: dict[int, tuple[int, Capture]]  # fd -> (OUT | ERR | RESULT, capture)
    request_fd: int | None  # the write end the request goes down, closed once sent
    forked: float
    profile: tuple[Any, ...] = ()  # what it is confined for: see agents.sandbox.child.Profile
    retired: bool = False  # told to exit unused (to make room for another profile)
    request: InvocationRequest | None = None
    network: bool = False
    started: float = 0.0
    timed_out: bool = False
    kill_at: float | None = None
    status: int | None = None  # the wait status, once reaped
    cpu_s: float = 0.0
    maxrss_kb: int = 0
    wchar: int = 0
    ended: float = 0.0
    leftovers: int = 0
    answered: bool = False  # before its reap: it closed its pipes after a complete result
    # ctx.call (agents.sandbox.relay): the template's end of its call socket, what came in on
    # it not yet whole, and the answers not yet sent (the child reads them when it will)
    call_sock: socket.socket | None = None
    call_frames: FrameReader = field(default_factory=lambda: FrameReader(MAX_CALL_FRAME))
    call_out: bytearray = field(default_factory=bytearray)

    @property
    def deadline(self) -> float:
        return self.started + self.request.limits.timeout_s if self.request else float("inf")

    def result(self) -> dict[str, Any]:
        """What the child wrote on its result pipe ({} if nothing whole)."""
        with contextlib.suppress(ValueError):
            result = json.loads(bytes(self.capture(RESULT).kept) or b"{}")
            if isinstance(result, dict):
                return result
        return {}

    def capture(self, which: int) -> Capture:
        for kind, cap in self.captures.values():
            if kind == which:
                return cap
        raise KeyError(which)


def wchar_of(io: bytes) -> int:
    """``wchar`` in the text of a ``/proc/<pid>/io``: every byte the process passed to
    write() (0 if absent). Bytes, not lines: the fork server and each child call it, and
    every object they make after a fork is a page fault."""
    start = io.find(b"wchar:")
    if start < 0:
        return 0
    with contextlib.suppress(ValueError):
        return int(io[start + 6 : io.find(b"\n", start)])
    return 0


def written_bytes(pid: int) -> int:
    """``wchar`` of a process not yet reaped (0 if it cannot be read)."""
    try:
        fd = os.open(b"/proc/%d/io" % pid, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return wchar_of(os.read(fd, 1024))
    except OSError:
        return 0
    finally:
        os.close(fd)


def live_children(parent: int) -> list[int]:
    """The children of ``parent`` (the fork server) that are not zombies: as it is their
    subreaper, every orphan of an invocation too."""
    out = []
    for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(int(pid))
    return out


def private_paths() -> list[str]:
    """The import paths a dropped uid cannot read: a lazy import from them fails in the child."""
    out = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        chain = [path, *path.parents]
        if any(p.exists() and not p.stat().st_mode & 0o001 for p in chain if p.is_dir()):
            out.append(entry)
    return out


def verdict(inv: Invocation, result: dict[str, Any]) -> tuple[ErrorCategory | None, str | None]:
    """How the invocation ended, from its wait status, its clock, its control group and what
    it wrote on its result pipe (which the agent could forge, so it is believed last)."""
    assert inv.status is not None and inv.request is not None
    if os.WIFEXITED(inv.status) and os.WEXITSTATUS(inv.status) == 0 and "output" in result:
        return None, None
    sig = os.WTERMSIG(inv.status) if os.WIFSIGNALED(inv.status) else None
    how = f"killed by signal {signal.Signals(sig).name}" if sig else f"exited with {inv.status >> 8}"
    limits = inv.request.limits
    if inv.timed_out:
        return ErrorCategory.TIMEOUT, f"timed out after {limits.timeout_s} s ({how})"
    if sig in (signal.SIGXCPU, signal.SIGXFSZ) or (sig == signal.SIGKILL and inv.cpu_s >= limits.cpu_s):
        return ErrorCategory.RESOURCE_EXCEEDED, f"over its CPU or file size limit ({how})"
    if inv.slot.cgroup is not None and inv.slot.cgroup.limit_hit():
        said = f": {result['error']}" if "error" in result else ""
        return ErrorCategory.RESOURCE_EXCEEDED, f"hit its memory or process limit ({how}){said}"
    if "category" in result:
        return ErrorCategory(result["category"]), str(result.get("error"))
    return ErrorCategory.INTERNAL_ERROR, f"the invocation {how} without a result"


def audit_of(inv: Invocation, category: ErrorCategory | None) -> InvocationAudit:
    """From the wait status and the rusage of the reap; or, answered before its exit, from
    what the child measured of itself right before ``_exit(0)``."""
    assert inv.status is not None and inv.request is not None
    status = inv.status
    return InvocationAudit(
        invocation_id=inv.request.id, agent=inv.request.agent,
        exit_status=os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        signal=os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        duration_ms=(inv.ended - inv.started) * 1000, cpu_ms=inv.cpu_s * 1000,
        peak_rss_bytes=inv.maxrss_kb * 1024,
        memory_peak_bytes=inv.slot.cgroup.memory_peak() if inv.slot.cgroup else None,
        bytes_written=inv.wchar, stdout_bytes=inv.capture(OUT).total, stderr_bytes=inv.capture(ERR).total,
        network=inv.network, leftover_processes=inv.leftovers, error=category,
    )  # fmt: skip


def unstarted_audit(request: InvocationRequest, category: ErrorCategory) -> InvocationAudit:
    return InvocationAudit(
        invocation_id=request.id, agent=request.agent, exit_status=None, signal=None,
        duration_ms=0.0, cpu_ms=0.0, peak_rss_bytes=0, memory_peak_bytes=None, bytes_written=0,
        stdout_bytes=0, stderr_bytes=0, network=False, leftover_processes=0, error=category,
    )  # fmt: skip

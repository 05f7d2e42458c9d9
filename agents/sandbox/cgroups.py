"""Control groups for invocations: found on the host (v2 with ``pids`` and
``memory`` where mounted so, else the v1 ``pids`` and ``memory`` hierarchies),
created once per template as a pool of slots and reused, because a
``mkdir``/``rmdir`` pair per invocation costs more than the fork itself.

A slot is handed out only when it holds no process; between uses its
counters are reset (v1) or read as a baseline (v2).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.sandbox.limits import SandboxLimits

__all__ = ["CgroupSlot", "Hierarchy", "find_hierarchies", "make_slots", "remove_slots", "stale_tags"]

CONTROLLERS = ("pids", "memory")


@dataclass(frozen=True)
class Hierarchy:
    """Where this process may create child groups for one controller (v1), or both (v2)."""

    version: int
    controllers: tuple[str, ...]
    path: Path  # our own group in this hierarchy


def _own_paths() -> dict[str, str]:
    """``/proc/self/cgroup``: controller (``""`` for v2) -> our group's path."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            out[name] = path
    return out


def _mounts() -> list[tuple[str, Path, set[str]]]:
    """(fstype, mount point, options) of every cgroup mount."""
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            out.append((parts[2], Path(parts[1]), set(parts[3].split(","))))
    return out


def _probe(path: Path, files: tuple[str, ...]) -> bool:
    """Can we create a child group under ``path`` that has ``files``?"""
    probe = path / f"af-sandbox-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return all((probe / name).exists() for name in files)
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def find_hierarchies() -> tuple[list[Hierarchy], str]:
    """The writable hierarchies for ``pids`` and ``memory``, and a reason when there are none."""
    try:
        own, mounts = _own_paths(), _mounts()
    except OSError as exc:
        return [], f"cannot read /proc: {exc}"
    for fstype, mount, _ in mounts:  # v2 first: one group holds both controllers
        if fstype != "cgroup2" or "" not in own:
            continue
        path = mount / own[""].lstrip("/")
        enabled = set((path / "cgroup.subtree_control").read_text().split()) if path.exists() else set()
        if {"pids", "memory"} <= enabled and _probe(path, ("pids.max", "memory.max")):
            return [Hierarchy(2, CONTROLLERS, path)], ""
    found = []
    for fstype, mount, options in mounts:
        for name in CONTROLLERS:
            if fstype == "cgroup" and name in options and name in own:
                path = mount / own[name].lstrip("/")
                limit = "pids.max" if name == "pids" else "memory.limit_in_bytes"
                if _probe(path, (limit,)):
                    found.append(Hierarchy(1, (name,), path))
    if found:
        return found, ""
    return [], "no writable cgroup v2 with pids+memory enabled, nor writable v1 pids/memory hierarchies"


@functools.lru_cache(maxsize=1024)
def _at(group: Path, name: str) -> str:
    """A control file's path, joined once (the template reads several per invocation)."""
    return f"{group}/{name}"


def _write(path: str | Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str | Path) -> str:
    """A control file, with one ``open``/``read``/``close`` (``Path.read_text`` adds four
    system calls per file, and the template reads several per invocation)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _read_int(path: str | Path, key: str | None = None) -> int:
    """The number in a one-value file, or the one after ``key`` in a keyed file (0 if absent)."""
    with contextlib.suppress(OSError):
        text = _read(path)
        if key is None:
            return int(text.split()[0]) if text.strip() != "max" else 0
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


@dataclass
class CgroupSlot:
    """One reusable group per hierarchy, for one invocation at a time."""

    dirs: list[tuple[Hierarchy, Path]]
    configured: SandboxLimits | None = None
    baseline: dict[str, int] = field(default_factory=dict)

    def prepare(self, limits: SandboxLimits) -> None:
        """Set the limits (when they changed) and zero the counters for a new invocation."""
        for h, path in self.dirs:
            if self.configured is None or self.configured != limits:
                if "pids" in h.controllers:
                    _write(_at(path, "pids.max"), str(limits.processes))
                if "memory" in h.controllers:
                    if h.version == 2:
                        _write(_at(path, "memory.max"), str(limits.memory_bytes))
                        with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                            _write(_at(path, "memory.swap.max"), "0")
                    else:
                        _write(_at(path, "memory.limit_in_bytes"), str(limits.memory_bytes))
                        with contextlib.suppress(OSError):
                            _write(_at(path, "memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
            if h.version == 1 and "memory" in h.controllers:
                _write(_at(path, "memory.max_usage_in_bytes"), "0")
                _write(_at(path, "memory.failcnt"), "0")
        self.configured = limits
        self.baseline = self._counters()

    def join_path(self) -> list[str]:
        """The ``cgroup.procs`` files the child writes its pid to, first thing after the fork."""
        return [_at(path, "cgroup.procs") for _, path in self.dirs]

    def _counters(self) -> dict[str, int]:
        out = {}
        for h, path in self.dirs:
            if "pids" in h.controllers:
                out["pids_max_hits"] = _read_int(_at(path, "pids.events"), "max")
            if "memory" in h.controllers:
                if h.version == 2:
                    out["oom_kills"] = _read_int(_at(path, "memory.events"), "oom_kill")
                    out["memory_max_hits"] = _read_int(_at(path, "memory.events"), "max")
                else:
                    out["oom_kills"] = _read_int(_at(path, "memory.oom_control"), "oom_kill")
                    out["memory_max_hits"] = _read_int(_at(path, "memory.failcnt"))
        return out

    def limit_hit(self) -> bool:
        """Did the invocation since :meth:`prepare` run into the process or memory limit?"""
        now = self._counters()
        return any(now[k] > self.baseline.get(k, 0) for k in now)

    def memory_peak(self) -> int | None:
        for h, path in self.dirs:
            if "memory" in h.controllers:
                name = "memory.peak" if h.version == 2 else "memory.max_usage_in_bytes"
                return _read_int(_at(path, name))
        return None

    def count(self) -> int | None:
        """How many processes the slot holds, from ``pids.current`` (one small read, where
        reading ``cgroup.procs`` of a v1 group builds a pid list the kernel frees later);
        None without a ``pids`` hierarchy."""
        for h, path in self.dirs:
            if "pids" in h.controllers:
                with contextlib.suppress(OSError, ValueError):
                    return int(_read(_at(path, "pids.current")))
        return None

    def pids(self) -> set[int]:
        out: set[int] = set()
        if self.count() == 0:
            return out
        for _, path in self.dirs:
            with contextlib.suppress(OSError):
                out.update(int(p) for p in _read(_at(path, "cgroup.procs")).split())
        return out

    def signal_all(self, sig: int) -> int:
        """Send ``sig`` to every process in the slot; how many there were."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return len(pids)

    def kill_all(self) -> None:
        """SIGKILL until empty: a forking process cannot outrun it, ``pids.max`` bounds the group."""
        for h, path in self.dirs:
            if h.version == 2:
                with contextlib.suppress(OSError):
                    _write(_at(path, "cgroup.kill"), "1")
        while self.signal_all(signal.SIGKILL):
            pass


def make_slots(hierarchies: list[Hierarchy], count: int, tag: str) -> list[CgroupSlot]:
    """``count`` slots under ``af-sandbox-<tag>/`` in each hierarchy."""
    slots = [CgroupSlot([]) for _ in range(count)]
    for h in hierarchies:
        base = h.path / f"af-sandbox-{tag}"
        base.mkdir(exist_ok=True)
        for i, slot in enumerate(slots):
            path = base / f"slot-{i}"
            path.mkdir(exist_ok=True)
            slot.dirs.append((h, path))
    return slots


def remove_slots(hierarchies: list[Hierarchy], tag: str) -> list[str]:
    """Kill what is left in them and remove the slots; the paths that could not be removed."""
    left = []
    for h in hierarchies:
        base = h.path / f"af-sandbox-{tag}"
        if not base.exists():
            continue
        for path in sorted(base.glob("slot-*")):
            CgroupSlot([(h, path)]).kill_all()
            deadline = time.monotonic() + 5.0
            while True:  # a killed process leaves its group a moment after the signal
                try:
                    path.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(path))
                        break
                    time.sleep(0.005)
        with contextlib.suppress(OSError):
            base.rmdir()
    return left


def stale_tags(parent: Path) -> list[str]:
    """The ``af-sandbox-<pid>`` entries under ``parent`` whose template is dead (SIGKILLed
    before it could clean up): their pid no longer exists."""
    out = []
    for path in parent.glob("af-sandbox-*"):
        tag = path.name.removeprefix("af-sandbox-")
        if tag.isdigit() and not Path(f"/proc/{tag}").exists():
            out.append(tag)
    return out

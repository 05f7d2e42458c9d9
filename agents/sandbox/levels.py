"""Which containment this host gives a sandboxed invocation, found once at start.

``detect_levels()`` probes without side effects that outlive it; a template
reports the levels it actually reached (``Sandbox.levels``), which can only
be fewer (e.g. a network namespace the kernel refused to create).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.sandbox.cgroups import find_hierarchies

__all__ = ["Levels", "detect_levels", "log_levels_once"]

log = logging.getLogger(__name__)

_CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Levels:
    """One flag per containment level; ``off_because`` says why each missing one is off."""

    rlimits: bool = True
    cgroup: str | None = None  # "v1" or "v2"
    cgroup_controllers: tuple[str, ...] = ()
    network_namespace: bool = False
    pid_namespace: bool = False
    uid_drop: bool = False
    off_because: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cgroup_controllers"] = list(self.cgroup_controllers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Levels:
        return cls(**{**data, "cgroup_controllers": tuple(data.get("cgroup_controllers", ()))})

    def without(self, name: str, reason: str) -> Levels:
        """The same levels with ``name`` off for ``reason``."""
        off = {**self.off_because, name: reason}
        if name == "cgroup":
            return replace(self, cgroup=None, cgroup_controllers=(), off_because=off)
        flags: dict[str, Any] = {name: False}
        return replace(self, off_because=off, **flags)


def _has_cap_sys_admin() -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> _CAP_SYS_ADMIN & 1)
    return False


def detect_levels() -> Levels:
    off: dict[str, str] = {}
    hierarchies, reason = find_hierarchies()
    if not hierarchies:
        off["cgroup"] = reason
    try:
        netns = os.path.exists("/proc/self/ns/net") and _has_cap_sys_admin()
    except OSError:
        netns = False
    if not netns:
        off["network_namespace"] = "no CAP_SYS_ADMIN (or no /proc/self/ns/net)"
    pidns = netns and os.path.exists("/proc/self/ns/pid")
    if not pidns:
        off["pid_namespace"] = "no CAP_SYS_ADMIN (or no /proc/self/ns/pid)"
    uid_drop = os.geteuid() == 0
    if not uid_drop:
        off["uid_drop"] = "the worker does not run as root: invocations keep its uid"
    versions = {h.version for h in hierarchies}
    return Levels(
        cgroup=f"v{versions.pop()}" if versions else None,
        cgroup_controllers=tuple(sorted(c for h in hierarchies for c in h.controllers)),
        network_namespace=netns,
        pid_namespace=pidns,
        uid_drop=uid_drop,
        off_because=off,
    )


_logged = False


def log_levels_once(levels: Levels) -> None:
    global _logged
    if not _logged:
        _logged = True
        log.info("sandbox containment on this host: %s", levels.as_dict())

"""What one invocation may use, and how the child process applies it to itself."""

from __future__ import annotations

import resource
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SandboxLimits", "rlimits", "set_rlimits"]

MiB = 1024 * 1024


class SandboxLimits(BaseModel):
    """Per invocation. ``memory_bytes`` is the control group's limit (where the
    host has one); ``address_space_bytes`` is ``RLIMIT_AS``, which the forked
    interpreter's own ~60 MB of mappings count against."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_s: float = Field(60.0, gt=0)  # wall clock, then SIGTERM
    grace_s: float = Field(5.0, ge=0)  # between SIGTERM and SIGKILL
    cpu_s: int = Field(60, ge=1)  # RLIMIT_CPU: SIGXCPU, then SIGKILL a second later
    memory_bytes: int = Field(512 * MiB, ge=16 * MiB)
    address_space_bytes: int = Field(1024 * MiB, ge=128 * MiB)
    open_files: int = Field(256, ge=16)
    file_size_bytes: int = Field(64 * MiB, ge=0)  # RLIMIT_FSIZE: per file written
    processes: int = Field(32, ge=1)  # RLIMIT_NPROC (per uid) and the cgroup's pids.max
    output_cap_bytes: int = Field(10 * MiB, ge=0)  # stdout and stderr each, then a marker


def rlimits(limits: SandboxLimits, *, pids_cgroup: bool = False) -> list[tuple[int, int, int]]:
    """``(resource, soft, hard)`` for the child to set (computed by the template: the
    child's side is a loop of ``setrlimit`` calls, see :func:`set_rlimits`).

    In a ``pids`` control group, that group's ``pids.max`` is the limit (it counts exactly
    the invocation's processes, and says so in its events); ``RLIMIT_NPROC`` stays a
    backstop at twice the number."""
    nproc = limits.processes * 2 if pids_cgroup else limits.processes
    return [
        (resource.RLIMIT_AS, limits.address_space_bytes, limits.address_space_bytes),
        (resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_CORE, 0, 0),
    ]


def set_rlimits(pairs: Iterable[Sequence[int]]) -> None:
    """In the child, before it drops privileges (a non-root process could not raise them back)."""
    for which, soft, hard in pairs:
        _, current_hard = resource.getrlimit(which)
        if current_hard != resource.RLIM_INFINITY:  # a limit is only ever lowered, never raised
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(which, (soft, hard))

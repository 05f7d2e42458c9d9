"""What an invocation produced and what it cost: the record the execution and
the finished event carry, and the errors of the sandbox itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from agents.errors import AgentError

__all__ = [
    "ErrorCategory",
    "InvocationAudit",
    "InvocationResult",
    "SandboxError",
    "SandboxStopped",
]


class ErrorCategory(StrEnum):
    """Why an invocation failed. Only ``INPUT_ERROR`` is permanent (no retry can fix it)."""

    INPUT_ERROR = "input_error"  # the input does not fit the agent's model, or the agent said so
    TIMEOUT = "timeout"  # the wall-clock limit passed
    RESOURCE_EXCEEDED = "resource_exceeded"  # memory, CPU seconds, file size, processes, open files
    DEPENDENCY_FAILURE = "dependency_failure"  # a connection the agent needed failed (or was not allowed)
    INTERNAL_ERROR = "internal_error"  # the agent raised, crashed, or the sandbox failed

    @property
    def permanent(self) -> bool:
        return self is ErrorCategory.INPUT_ERROR


class InvocationAudit(BaseModel):
    """One invocation's facts, JSON-serialisable (``model_dump(mode="json")``)."""

    model_config = ConfigDict(frozen=True)

    invocation_id: str
    agent: str
    exit_status: int | None  # the exit code, or None when ended by a signal
    signal: int | None  # the signal that ended the child, if any
    duration_ms: float  # fork to reaped, wall clock
    cpu_ms: float  # user + system time of the invocation's main process
    peak_rss_bytes: int  # the main process's high-water RSS (shared pages of the template included)
    memory_peak_bytes: int | None  # what the control group charged at most (None without one)
    bytes_written: int  # every write() of the main process: files, pipes, sockets
    stdout_bytes: int  # what it wrote to stdout (kept up to the cap)
    stderr_bytes: int
    network: bool  # whether the invocation could reach the network
    leftover_processes: int  # still running when the main process ended, then killed
    error: ErrorCategory | None  # None on success


class SandboxError(AgentError):
    """Base of the sandbox's own errors (an agent's failure is an :class:`InvocationResult`)."""


class SandboxStopped(SandboxError):
    """The sandbox is not running (not started, stopped, or its template died)."""

    status = 503


@dataclass(frozen=True)
class InvocationResult:
    """``output`` on success (the agent's Output model, dumped to JSON types);
    otherwise ``error`` says what went wrong and ``audit.error`` its category.

    A success can be answered before the child's exit (it closed its pipes and had no
    descendant): its slot, process and ``workdir`` are cleaned right after, not before."""

    output: dict[str, Any] | None
    error: str | None
    audit: InvocationAudit
    stdout: bytes = b""
    stderr: bytes = b""
    workdir: str | None = None  # the private working directory it had (removed by now or soon)

    @property
    def ok(self) -> bool:
        return self.audit.error is None

    @property
    def category(self) -> ErrorCategory | None:
        return self.audit.error

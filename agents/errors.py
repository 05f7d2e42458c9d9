"""Errors of the agents layer."""

from __future__ import annotations

from mesh.errors import PermanentError

__all__ = [
    "AgentCallError",
    "AgentCallFailed",
    "AgentCallRefused",
    "AgentCallTimedOut",
    "AgentError",
    "AgentInputInvalid",
    "AgentNotFound",
    "CallDepthExceeded",
    "DatabaseUnavailable",
    "MigrationFailed",
    "RunNotFound",
]


class AgentError(Exception):
    """Base of every error raised by ``agents``."""

    status = 500


class AgentNotFound(AgentError):
    status = 404

    def __init__(self, key: str) -> None:
        super().__init__(f"no agent named {key!r}")
        self.key = key


class RunNotFound(AgentError):
    status = 404

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run with id {run_id!r}")
        self.run_id = run_id


class AgentInputInvalid(AgentError):
    """The input does not match the agent's input model (a caller error)."""

    status = 422

    def __init__(self, message: str, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class DatabaseUnavailable(AgentError):
    status = 503


class MigrationFailed(AgentError):
    status = 500


# What ``ctx.call`` raises (agents.calls); here, so a sandboxed run raises the same classes.


class AgentCallError(AgentError):
    """Base of what ``ctx.call`` raises. ``agent``: the callee."""

    def __init__(self, message: str, agent: str) -> None:
        super().__init__(message)
        self.agent = agent


class AgentCallRefused(AgentCallError, PermanentError):
    """Nothing was enqueued: no such agent, an input it refuses, or too deep a chain."""


class CallDepthExceeded(AgentCallRefused):
    def __init__(self, agent: str, depth: int, limit: int) -> None:
        super().__init__(f"calling {agent} would nest {depth} agent calls deep (at most {limit})", agent)
        self.depth = depth


class AgentCallFailed(AgentCallError, PermanentError):
    """The callee's run ended without a result. Permanent for the caller: its retry would
    find the same recorded outcome. ``run_status``: the callee run's final status, ``category``: its
    failure in a word (:func:`agents.calls.failure_category`)."""

    def __init__(self, agent: str, run_id: str, status: str, category: str, error: str | None) -> None:
        super().__init__(f"{agent} run {run_id} {status} ({category}): {error or 'no detail'}", agent)
        self.run_id, self.run_status, self.category, self.error = run_id, status, category, error


class AgentCallTimedOut(AgentCallError, TimeoutError):
    """No outcome within the call's ``timeout_s``. The callee's run goes on; a retry of
    the caller waits for the same run again."""

    category = "timeout"

    def __init__(self, agent: str, run_id: str, timeout_s: float) -> None:
        super().__init__(f"{agent} run {run_id} has no outcome after {timeout_s:g} s", agent)
        self.run_id, self.timeout_s = run_id, timeout_s

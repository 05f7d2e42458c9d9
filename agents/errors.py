"""Errors of the agents layer."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "AgentInputInvalid",
    "AgentNotFound",
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

"""Errors of the resilience layer: what a run records when a policy acted."""

from __future__ import annotations

from agents.errors import AgentError
from mesh.errors import PermanentError

__all__ = [
    "AgentTimeout",
    "BreakerOpen",
    "FallbackExhausted",
    "NotRetryable",
    "ResilienceConfigError",
    "ResilienceError",
]


class ResilienceError(AgentError):
    """Base of the errors a resilience policy raises."""


class ResilienceConfigError(ResilienceError):
    """A resilience block that cannot apply to its agent: an exception class
    that does not import, a fallback agent this process does not have, a
    default response its Output model refuses. Raised when the worker starts."""

    status = 422


class AgentTimeout(ResilienceError):
    """The attempt ran past the block's ``timeout_s`` and was cancelled (category ``timeout``)."""

    status = 504

    def __init__(self, agent: str, timeout_s: float) -> None:
        super().__init__(f"[timeout] {agent} gave no answer within {timeout_s:g} s: cancelled")
        self.agent, self.timeout_s = agent, timeout_s


class BreakerOpen(ResilienceError):
    """The agent's breaker is open: the call failed fast without running. Always
    retryable (the queue backs off and tries again), unless a fallback answers."""

    status = 503

    def __init__(self, agent: str, retry_after_s: float) -> None:
        super().__init__(f"[breaker_open] {agent}'s circuit breaker is open for {retry_after_s:.1f} s more")
        self.agent, self.retry_after_s = agent, retry_after_s


class NotRetryable(PermanentError, ResilienceError):
    """A failure the agent's ``retry.on`` does not name: the run fails at once."""

    status = 500


class FallbackExhausted(ResilienceError):
    """Every hop of the fallback chain failed and it has no default response."""

    status = 502

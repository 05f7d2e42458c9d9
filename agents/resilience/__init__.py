"""Resilience, declared per agent: retry, timeout, bulkhead, fallback chain, circuit breaker.

Declare it with the agent::

    from agents.resilience import Bulkhead, Fallback, Resilience, RetryPolicy

    class Report(Agent[In, Out]):
        key = "report"
        resilience = Resilience(
            retry=RetryPolicy(max_attempts=5, on=("timeout", "builtins.ConnectionError")),
            timeout_s=30,
            bulkhead=Bulkhead(max_concurrent=4),
            fallback=Fallback(agents=("report-lite",), default={"status": "unavailable"}),
        )

Retry and bulkhead are the queue's own (delayed ``nak``, the dispatcher's per-agent
budget); timeout, breaker and fallback act around ``run`` in the worker
(:mod:`agents.resilience.guard`, applied by :func:`agents.runtime.worker_for`).
docs/resilience.md says what each policy guarantees and what it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from agents.resilience.breaker import BreakerState, CircuitBreaker
    from agents.resilience.errors import (
        AgentTimeout,
        BreakerOpen,
        FallbackExhausted,
        NotRetryable,
        ResilienceConfigError,
        ResilienceError,
    )
    from agents.resilience.policy import BreakerPolicy, Bulkhead, Fallback, Resilience, RetryPolicy

__all__ = [
    "AgentTimeout",
    "BreakerOpen",
    "BreakerPolicy",
    "BreakerState",
    "Bulkhead",
    "CircuitBreaker",
    "Fallback",
    "FallbackExhausted",
    "NotRetryable",
    "Resilience",
    "ResilienceConfigError",
    "ResilienceError",
    "RetryPolicy",
]

# Loaded on first use: an agent's module (``agents.contract`` imports the policy)
# does not load the breaker's Prometheus metrics, nor the queue's worker.
_WHERE = {
    "BreakerState": "agents.resilience.breaker",
    "CircuitBreaker": "agents.resilience.breaker",
    "AgentTimeout": "agents.resilience.errors",
    "BreakerOpen": "agents.resilience.errors",
    "FallbackExhausted": "agents.resilience.errors",
    "NotRetryable": "agents.resilience.errors",
    "ResilienceConfigError": "agents.resilience.errors",
    "ResilienceError": "agents.resilience.errors",
    "BreakerPolicy": "agents.resilience.policy",
    "Bulkhead": "agents.resilience.policy",
    "Fallback": "agents.resilience.policy",
    "Resilience": "agents.resilience.policy",
    "RetryPolicy": "agents.resilience.policy",
}

__getattr__ = lazy_exports(__name__, _WHERE)

"""Prometheus metrics of the agents' circuit breakers (:mod:`agents.resilience.breaker`).

Counted in the process that runs the agent (a worker pool); the gateway's
``/metrics`` merges the pools' registries, each sample labelled ``worker``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = ["BREAKER_REJECTED", "BREAKER_STATE", "BREAKER_TRANSITIONS"]

BREAKER_STATE = Gauge("af_breaker_state", "Local breaker state: 0 closed, 1 half-open, 2 open", ["agent"])
BREAKER_TRANSITIONS = Counter(
    "af_breaker_transitions_total", "Local breaker state changes", ["agent", "from_state", "to_state"]
)
BREAKER_REJECTED = Counter("af_breaker_rejected_total", "Calls refused by an open breaker", ["agent"])

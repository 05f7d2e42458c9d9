"""The resilience block: one declarative, validated description per agent.

Each policy says what it maps onto, because most of them are not enforced
in the worker's memory but by the queue itself:

* :class:`RetryPolicy` → the lane's delayed ``nak`` (backoff, jitter) and the
  worker's attempt count (``AgentQueueConfig.max_attempts``); the handler
  only decides *whether* a failure retries (:class:`~mesh.queue.worker.PermanentError`
  when not). Never a sleep in the worker.
* ``timeout_s`` → ``asyncio.timeout`` around ``agent.run``: the run is
  cancelled at its next await, the attempt fails with category ``timeout``.
* :class:`Bulkhead` → ``AgentQueueConfig.concurrency``, the dispatcher's
  per-agent budget over its priority lanes: excess tasks stay in the stream.
* :class:`Fallback` → secondary agents called in-process, then a static answer.
* :class:`BreakerPolicy` → the local failure-rate breaker (:mod:`agents.resilience.breaker`).

A per-tenant override is another (partial) block merged onto the agent's:
:meth:`Resilience.merge`.
"""

from __future__ import annotations

import re
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mesh.names import AGENT_KEY_RE

__all__ = [
    "CATEGORIES",
    "BreakerPolicy",
    "Bulkhead",
    "Fallback",
    "Resilience",
    "RetryPolicy",
]

# What ``retry.on`` may name besides exception classes: the sandbox's error
# categories (agents.sandbox.audit.ErrorCategory; a unit test keeps the two
# equal) but ``input_error`` (bad input is permanent: no retry can fix it).
# Spelled out, not imported: the agent contract needs this module, and the
# sandbox package needs the agent contract.
CATEGORIES: Final = ("timeout", "resource_exceeded", "dependency_failure", "internal_error")
INPUT_ERROR: Final = "input_error"
_DOTTED: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MIN_BACKOFF_S: Final = 0.05  # the queue's floor (AgentQueueConfig.backoff)


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Policy):
    """How a failed attempt is tried again: by the queue, after a delayed ``nak``.

    The delay before attempt ``n + 1`` is ``ceiling = min(backoff_max_s,
    backoff_base_s * 2 ** (n - 1))`` randomised down to ``ceiling * (1 - jitter)``.
    """

    max_attempts: int | None = Field(
        default=None, ge=1, le=100, description="runs started at most; None: the agent's max_attempts"
    )
    backoff_base_s: float = Field(default=1.0, ge=MIN_BACKOFF_S, le=3600)
    backoff_max_s: float = Field(default=60.0, ge=MIN_BACKOFF_S, le=86400)
    jitter: float = Field(default=0.5, ge=0, le=1, description="share of the delay randomised away")
    on: tuple[str, ...] = Field(
        default=CATEGORIES,
        max_length=50,
        description="what retries: categories (" + ", ".join(CATEGORIES) + ") or exception classes "
        "by dotted name ('builtins.ConnectionError', 'httpx.ConnectError'); anything else, and "
        "PermanentError, fails the run at once",
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must not be below "
                f"backoff_base_s ({self.backoff_base_s})"
            )
        for entry in self.on:
            if entry in CATEGORIES:
                continue
            if entry == INPUT_ERROR:
                raise ValueError("'input_error' never retries: no retry can fix bad input")
            if not _DOTTED.fullmatch(entry) or "." not in entry:
                raise ValueError(
                    f"retry.on entry {entry!r} is neither a category ({', '.join(CATEGORIES)}) "
                    "nor a dotted exception class name like 'builtins.ConnectionError'"
                )
        return self

    @property
    def retries_everything(self) -> bool:
        """Every category retries: the handler never needs to classify a failure."""
        return set(CATEGORIES) <= set(self.on)


class Bulkhead(_Policy):
    """At most ``max_concurrent`` invocations of the agent at once per worker; the
    rest wait in the stream (it is the dispatcher's per-agent budget)."""

    max_concurrent: int = Field(ge=1, le=100_000)


class Fallback(_Policy):
    """When the primary's failure would end the run (not retryable, its last attempt,
    or its breaker is open): each ``agents`` in order, called in-process with the
    same input, then ``default`` (validated against the primary's Output model)."""

    agents: tuple[str, ...] = Field(default=(), max_length=10)
    default: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.agents and self.default is None:
            raise ValueError("a fallback needs secondary agents, a default response, or both")
        for key in self.agents:
            if not AGENT_KEY_RE.fullmatch(key):
                raise ValueError(f"fallback agent {key!r} is not an agent key")
        if len(set(self.agents)) != len(self.agents):
            raise ValueError("a fallback agent is named twice")
        return self


class BreakerPolicy(_Policy):
    """A local failure-rate circuit breaker (closed → open → half-open → closed).

    Closed: it opens when, over the last ``window_s``, at least ``min_calls``
    calls ended and ``failure_rate`` of them failed. Open: calls fail fast for
    ``open_s``. Half-open: ``half_open_calls`` probes go through; all succeed →
    closed, one fails → open again."""

    window_s: float = Field(default=60.0, ge=1, le=3600)
    min_calls: int = Field(default=20, ge=1, le=100_000)
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    open_s: float = Field(default=30.0, gt=0, le=3600)
    half_open_calls: int = Field(default=3, ge=1, le=1000)


class Resilience(_Policy):
    """One agent's resilience, declared with it::

        class Report(Agent[In, Out]):
            resilience = Resilience(
                retry=RetryPolicy(max_attempts=5, backoff_base_s=2, on=("timeout", "dependency_failure")),
                timeout_s=30,
                bulkhead=Bulkhead(max_concurrent=4),
                fallback=Fallback(agents=("report-lite",), default={"status": "unavailable"}),
                breaker=BreakerPolicy(min_calls=10, failure_rate=0.5, open_s=60),
            )

    Every policy is optional; the default block changes nothing.
    """

    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = Field(default=None, gt=0, le=86400, description="per attempt; None: none")
    bulkhead: Bulkhead | None = None
    fallback: Fallback | None = None
    breaker: BreakerPolicy | None = None

    def merge(self, override: Resilience | dict[str, Any]) -> Resilience:
        """This block with ``override``'s explicitly set fields on top, policy by
        policy and field by field (a tenant's override names only what differs).
        Set a policy to ``None`` in the override to switch it off. The result is
        validated again as a whole."""
        given = override.model_dump(exclude_unset=True) if isinstance(override, Resilience) else override
        return Resilience.model_validate(_deep_merge(self.model_dump(exclude_unset=True), given))

    @property
    def enforced_in_handler(self) -> bool:
        """Does any policy act around ``run`` (otherwise the handler is the plain one)?"""
        return bool(self.timeout_s or self.fallback or self.breaker or not self.retry.retries_everything)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "default":
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged

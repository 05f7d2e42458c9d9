"""How an agent's retry policy and bulkhead map onto its queue lanes, and which
failures retry.

The queue does the retrying: a retryable failure is a delayed ``nak`` with the
lane's backoff (:meth:`LaneConfig.backoff`), attempts are counted by the
worker against ``max_attempts``, and a failure that must not retry is raised
as :class:`~mesh.queue.worker.PermanentError` (the run fails at once, to the
DLQ). Nothing here sleeps.
"""

from __future__ import annotations

import builtins
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agents.resilience.errors import AgentTimeout, BreakerOpen, ResilienceConfigError
from agents.resilience.policy import CATEGORIES, MIN_BACKOFF_S, Resilience, RetryPolicy
from agents.sandbox.audit import ErrorCategory
from mesh.backoff import backoff_s
from mesh.queue.worker import AgentQueueConfig, PermanentError

if TYPE_CHECKING:
    from agents.contract import Agent

__all__ = ["LaneConfig", "RetryRule", "categorize", "queue_config"]


@dataclass(frozen=True, slots=True)
class LaneConfig(AgentQueueConfig):
    """:class:`AgentQueueConfig` with the retry policy's jitter (the queue's own
    backoff is this with ``jitter=0.5``)."""

    jitter: float = 0.5

    def backoff(self, attempt: int) -> float:
        return backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, jitter=self.jitter,
                         floor_s=MIN_BACKOFF_S)  # fmt: skip


def queue_config(agent: Agent[Any, Any], block: Resilience | None = None) -> LaneConfig:
    """The queue settings of ``agent``'s lanes: its retry policy and bulkhead
    (``block``: default the agent's own ``resilience``)."""
    block = block or agent.resilience
    retry = block.retry
    return LaneConfig(
        agent.key,
        ack_wait_s=agent.ack_wait_s,
        max_attempts=retry.max_attempts or agent.max_attempts,
        concurrency=block.bulkhead.max_concurrent if block.bulkhead else None,
        backoff_base_s=retry.backoff_base_s,
        backoff_max_s=retry.backoff_max_s,
        jitter=retry.jitter,
        version=agent.version,
    )


def categorize(exc: BaseException) -> ErrorCategory:
    """The category of a failure, in the sandbox's words (:class:`ErrorCategory`): its
    own ``category`` attribute when it carries one (a sandboxed run's failure), else by type."""
    declared = getattr(exc, "category", None)
    if isinstance(declared, str) and declared in _CATEGORY_VALUES:
        return ErrorCategory(declared)
    if isinstance(exc, PermanentError | ValidationError):
        return ErrorCategory.INPUT_ERROR
    if isinstance(exc, AgentTimeout | TimeoutError):
        return ErrorCategory.TIMEOUT
    if isinstance(exc, BreakerOpen | ConnectionError):
        return ErrorCategory.DEPENDENCY_FAILURE
    if isinstance(exc, MemoryError | RecursionError):
        return ErrorCategory.RESOURCE_EXCEEDED
    return ErrorCategory.INTERNAL_ERROR


_CATEGORY_VALUES = frozenset(c.value for c in ErrorCategory)


class RetryRule:
    """``retry.on``, compiled: the exception classes imported once, at worker start."""

    __slots__ = ("categories", "classes", "everything")

    def __init__(self, agent: str, policy: RetryPolicy) -> None:
        self.everything = policy.retries_everything
        self.categories = frozenset(ErrorCategory(e) for e in policy.on if e in CATEGORIES)
        self.classes = tuple(_exception_class(agent, e) for e in policy.on if e not in CATEGORIES)

    def retries(self, exc: BaseException, category: ErrorCategory) -> bool:
        if category is ErrorCategory.INPUT_ERROR:
            return False
        if self.everything or isinstance(exc, BreakerOpen):
            return True
        return category in self.categories or isinstance(exc, self.classes)


def _exception_class(agent: str, dotted: str) -> type[BaseException]:
    module_name, _, name = dotted.rpartition(".")
    where = f"agent {agent!r}: retry.on names {dotted!r}"
    try:
        found = getattr(builtins if module_name == "builtins" else importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise ResilienceConfigError(f"{where}, which does not import: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ResilienceConfigError(f"{where}, which is not an exception class")
    return found

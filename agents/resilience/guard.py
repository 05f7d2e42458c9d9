"""What runs around one agent's ``run``: its resilience block, compiled once per worker.

Order of one attempt: the breaker admits the call (or it fails fast), ``run``
goes under the timeout, the outcome feeds the breaker, and a failure is
classified: retryable ones are raised as they are (the queue retries them
after a delayed ``nak``), others as :class:`NotRetryable`. A failure that
ends the run (not retryable, the last attempt, or an open breaker) goes down
the fallback chain first when the block declares one.

Fallback hops run in the worker, not via the queue: each secondary agent is
taken from this worker's registry and called in-process (or through
:data:`Invoke`, the sandbox, on a sandboxed worker), its input validated
against its own Input model and its answer against the primary's Output model
(the run is the primary's), under its own ``timeout_s`` (else the primary's). A secondary's
retry, breaker and fallback do not apply. The answer carries the chain in
its ``_fallback`` key (:data:`FALLBACK_KEY`): which hop answered and why each
earlier one failed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from agents.resilience import metrics
from agents.resilience.breaker import CircuitBreaker
from agents.resilience.errors import (
    AgentTimeout,
    BreakerOpen,
    FallbackExhausted,
    NotRetryable,
    ResilienceConfigError,
)
from agents.resilience.policy import Resilience
from agents.resilience.retries import RetryRule, categorize, queue_config
from agents.sandbox.audit import ErrorCategory
from mesh.queue.worker import TaskContext

if TYPE_CHECKING:
    from pydantic import BaseModel

    from agents.contract import Agent, RunContext
    from agents.registry import Registry

__all__ = ["FALLBACK_KEY", "AgentGuard", "Invoke", "check", "describe_resilience"]

FALLBACK_KEY: Final = "_fallback"

Invoke = Callable[["Agent[Any, Any]", TaskContext, "RunContext"], Awaitable[Any]]
"""Runs an agent once somewhere else than in-process (a sandboxed child): its
answer as JSON types. It parses the input and enforces the agent's ``timeout_s``
itself (the guard adds no timer), and a failure it raises may carry ``category``
(an :class:`~agents.sandbox.audit.ErrorCategory` value), which :func:`categorize`
honours. The breaker, ``retry.on`` and the fallback chain apply as to ``run``;
the secondaries of the chain run through it too, so a sandboxed worker never
runs agent code unconfined."""


class AgentGuard:
    """One agent's block, ready to enforce: the compiled retry rule, the breaker,
    the resolved fallback agents. :class:`ResilienceConfigError` when the block
    cannot apply (checked here, at worker start, not at the first failure)."""

    def __init__(
        self,
        agent: Agent[Any, Any],
        registry: Registry | None = None,
        block: Resilience | None = None,
        invoke: Invoke | None = None,
    ) -> None:
        """``invoke``: how agents run when not in-process (the sandbox), see :data:`Invoke`."""
        self.agent, self.invoke = agent, invoke
        self.block = block = block or agent.resilience
        self.max_attempts = block.retry.max_attempts or agent.max_attempts
        self.rule = RetryRule(agent.key, block.retry)
        self.timeout_s = block.timeout_s
        self.fallback = block.fallback
        self.secondaries = (
            [_secondary(agent, key, registry) for key in self.fallback.agents] if self.fallback else []
        )
        self.default = _checked_default(agent, self.fallback.default) if self.fallback else None
        self.breaker = CircuitBreaker(agent.key, block.breaker) if block.breaker else None
        self._rejected = metrics.BREAKER_REJECTED.labels(agent.key)

    async def call(self, task: TaskContext, parsed: BaseModel | None, ctx: RunContext) -> Any:
        """Run the agent once under the block; its answer as JSON types, or the error to record.
        ``parsed``: the input as the agent's model (None with ``invoke``, which parses its own)."""
        breaker, ticket = self.breaker, None
        if breaker is not None:
            ticket = breaker.admit()
            if ticket is None:
                self._rejected.inc()
                refused = BreakerOpen(self.agent.key, breaker.retry_after_s)
                if self.fallback is None:
                    raise refused
                final = task.attempt >= self.max_attempts
                return await self._fall_back(task, ctx, refused, permanent=final)
        try:
            if self.invoke is not None:
                answer = await self.invoke(self.agent, task, ctx)
            else:
                answer = (await self._bounded(self.agent.run(parsed, ctx), self.timeout_s)).model_dump(
                    mode="json"
                )
        except asyncio.CancelledError:
            if breaker is not None and ticket is not None:
                breaker.release(ticket)
            raise
        except Exception as exc:
            category = categorize(exc)
            if breaker is not None and ticket is not None:
                # Bad input is the caller's fault, not the agent's: it does not trip the breaker.
                breaker.record(ticket, ok=category is ErrorCategory.INPUT_ERROR)
            retryable = self.rule.retries(exc, category)
            if self.fallback is not None and (not retryable or task.attempt >= self.max_attempts):
                return await self._fall_back(task, ctx, exc, permanent=not retryable)
            if retryable:
                raise
            raise NotRetryable(f"[{category}] {type(exc).__name__}: {exc} (not in retry.on)") from exc
        if breaker is not None and ticket is not None:
            breaker.record(ticket, ok=True)
        return answer

    async def _bounded(self, run: Awaitable[BaseModel], timeout_s: float | None) -> BaseModel:
        if timeout_s is None:
            return await run
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                return await run
        except TimeoutError:
            if limit.expired():  # ours, not a TimeoutError the agent raised itself
                raise AgentTimeout(self.agent.key, timeout_s) from None
            raise

    async def _fall_back(
        self, task: TaskContext, ctx: RunContext, cause: Exception, *, permanent: bool
    ) -> Any:
        """The first answer down the chain, with the chain recorded; else the error to record."""
        hops = [_hop("primary", self.agent.key, cause)]
        for secondary in self.secondaries:
            try:
                if self.invoke is not None:
                    answer = await self.invoke(secondary, task, ctx)
                else:
                    parsed = secondary.Input.model_validate(task.input)
                    timeout_s = secondary.resilience.timeout_s or self.timeout_s
                    answer = (await self._bounded(secondary.run(parsed, ctx), timeout_s)).model_dump(
                        mode="json"
                    )
                answer = self.agent.Output.model_validate(answer).model_dump(mode="json")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                hops.append(_hop("secondary", secondary.key, exc))
                continue
            hops.append(_hop("secondary", secondary.key, None))
            return _answered(answer, hops)
        if self.default is not None:
            hops.append(_hop("default", None, None))
            return _answered(dict(self.default), hops)
        failed = "; ".join(f"{h['hop']} {h['agent']}: {h['error']}" for h in hops)
        if permanent:
            raise NotRetryable(f"every fallback hop failed: {failed}") from cause
        raise FallbackExhausted(f"every fallback hop failed: {failed}") from cause


def describe_resilience(agent: Agent[Any, Any], registry: Registry | None) -> dict[str, Any]:
    """What ``agent inspect`` shows: the block as declared, the queue settings it
    becomes, whether anything runs around ``run``, and why it cannot apply (if so)."""
    cfg = queue_config(agent)
    return {
        "block": agent.resilience.model_dump(mode="json"),
        "queue": {
            "max_attempts": cfg.max_attempts, "backoff_base_s": cfg.backoff_base_s,
            "backoff_max_s": cfg.backoff_max_s, "jitter": cfg.jitter,
            "concurrency": cfg.concurrency, "ack_wait_s": cfg.ack_wait_s,
        },
        "enforced_in_handler": agent.resilience.enforced_in_handler,
        "problem": check(agent, registry),
    }  # fmt: skip


def check(agent: Agent[Any, Any], registry: Registry | None) -> str | None:
    """Why ``agent``'s block cannot apply in a process with ``registry``, or None:
    what :class:`AgentGuard` checks at worker start, without making a breaker."""
    block = agent.resilience
    try:
        RetryRule(agent.key, block.retry)
        if block.fallback is not None:
            for key in block.fallback.agents:
                _secondary(agent, key, registry)
            _checked_default(agent, block.fallback.default)
    except ResilienceConfigError as exc:
        return str(exc)
    return None


def _secondary(agent: Agent[Any, Any], key: str, registry: Registry | None) -> Agent[Any, Any]:
    if key == agent.key:
        raise ResilienceConfigError(f"agent {key!r} names itself as its fallback")
    if registry is None or key not in registry:
        raise ResilienceConfigError(
            f"agent {agent.key!r}: fallback agent {key!r} is not registered in this process"
        )
    return registry.get(key)


def _checked_default(agent: Agent[Any, Any], default: dict[str, Any] | None) -> dict[str, Any] | None:
    """The default response as the primary's Output model dumps it."""
    if default is None:
        return None
    try:
        answer = agent.Output.model_validate(default).model_dump(mode="json")
    except Exception as exc:
        raise ResilienceConfigError(
            f"agent {agent.key!r}: fallback.default does not fit its Output model: {exc}"
        ) from exc
    return answer if isinstance(answer, dict) else {"value": answer}


def _hop(hop: str, agent: str | None, error: BaseException | None) -> dict[str, Any]:
    if error is None:
        return {"hop": hop, "agent": agent, "answered": True}
    return {
        "hop": hop, "agent": agent, "answered": False, "category": str(categorize(error)),
        "error": f"{type(error).__name__}: {error}"[:2000],
    }  # fmt: skip


def _answered(answer: Any, hops: list[dict[str, Any]]) -> Any:
    chain = {"answered_by": hops[-1]["hop"], "agent": hops[-1]["agent"], "hops": hops}
    if isinstance(answer, dict):
        return {**answer, FALLBACK_KEY: chain}
    return {"value": answer, FALLBACK_KEY: chain}

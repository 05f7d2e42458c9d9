"""What an agent is: an async ``run(input) -> output`` with pydantic models at both ends.

Example::

    class Double(Agent[DoubleIn, DoubleOut]):
        key = "double"
        description = "Doubles a number"
        Input, Output = DoubleIn, DoubleOut

        async def run(self, input: DoubleIn, ctx: RunContext) -> DoubleOut:
            return DoubleOut(value=input.value * 2)

An agent that reads configuration declares its model as ``Config``; the platform
refuses a config whose ``values`` do not fit it, and each run sees the config of its
tenant (the agent's, the tenant's override on top: docs/config.md) as ``ctx.config``,
an instance of ``Config`` (without one: the values as a dict)::

    class Settings(BaseModel):
        factor: float = 2.0

    class Scale(Agent[DoubleIn, DoubleOut]):
        key = "scale"
        Input, Output, Config = DoubleIn, DoubleOut, Settings

        async def run(self, input: DoubleIn, ctx: RunContext) -> DoubleOut:
            return DoubleOut(value=input.value * ctx.config.factor)
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel

from agents.resilience.policy import Resilience

__all__ = ["Agent", "Calls", "RunContext"]

I = TypeVar("I", bound=BaseModel)  # noqa: E741
O = TypeVar("O", bound=BaseModel)  # noqa: E741


async def _no_progress(percent: float) -> None:
    return None


_NO_CALLS = "this run cannot call agents: only a run a worker serves can (agents.runtime.worker_for)"


def _no_usage(model: str, input_tokens: int, output_tokens: int) -> None:
    return None


class Calls(Protocol):
    """Where a run's calls of other agents go (:class:`agents.calls.CallSite` in a worker)."""

    async def call(self, agent: str, input: Mapping[str, Any] | BaseModel, *, timeout_s: float,
                   key: str | None, priority: int | None) -> dict[str, Any]: ...  # fmt: skip

    async def submit(self, agent: str, input: Mapping[str, Any] | BaseModel, *, key: str | None,
                     priority: int | None) -> str: ...  # fmt: skip


@dataclass
class RunContext:
    """What an agent knows about the run it serves. Fence side effects by ``run_id``."""

    run_id: str
    tenant: str = "default"
    attempt: int = 1
    routing_key: str | None = None
    #: The run's configuration values, as its tenant sees them when the run started (hot-reloaded
    #: between runs, never during one): the agent's ``Config`` model, or a dict without one.
    config: Any = field(default_factory=dict)
    _progress: Callable[[float], Awaitable[None]] = field(default=_no_progress, repr=False)
    _usage: Callable[[str, int, int], None] = field(default=_no_usage, repr=False)
    _calls: Calls | None = field(default=None, repr=False)

    async def report_progress(self, percent: float) -> None:
        await self._progress(percent)

    def report_usage(self, model: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Say that this run spent tokens on ``model``: carried on the run's finished
        event and priced by metering (docs/processors.md). Call it once per model call."""
        self._usage(model, input_tokens, output_tokens)

    async def call(
        self,
        agent: str,
        input: Mapping[str, Any] | BaseModel,
        *,
        timeout_s: float = 60.0,
        key: str | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Run ``agent`` on ``input`` through the task queue and return its result.

        The run is this run's child: same tenant, correlation id and trace, this
        run's priority unless ``priority`` says otherwise. A retry or redelivery of
        this run makes the same call again without a second run of ``agent``: the
        n-th call of a run is keyed by the run id and n (or by ``key``), so calls
        must come in the same order with the same input on every attempt (or carry
        a ``key``). Raises :class:`~agents.errors.AgentCallFailed` (with the callee's
        error category) when that run failed, :class:`~agents.errors.AgentCallTimedOut`
        after ``timeout_s`` (the callee's run goes on; a retry of this run waits for
        it again), :class:`~agents.errors.AgentCallRefused` for an unknown agent, an
        input that does not fit it, or a chain deeper than 8 calls (docs/queue.md)."""
        if self._calls is None:
            raise RuntimeError(_NO_CALLS)
        return await self._calls.call(agent, input, timeout_s=timeout_s, key=key, priority=priority)

    async def submit(
        self, agent: str, input: Mapping[str, Any] | BaseModel, *, key: str | None = None,
        priority: int | None = None,
    ) -> str:  # fmt: skip
        """As :meth:`call`, without waiting: the callee's run id (the same on a retry)."""
        if self._calls is None:
            raise RuntimeError(_NO_CALLS)
        return await self._calls.submit(agent, input, key=key, priority=priority)


class Agent(ABC, Generic[I, O]):
    """Base class of every agent. Subclasses set the class attributes and ``run``."""

    key: ClassVar[str]
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = ""
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    # The model of its configuration values (ctx.config; docs/config.md); None: any JSON object
    Config: ClassVar[type[BaseModel] | None] = None
    # Queue settings (see mesh.queue.worker.AgentQueueConfig)
    ack_wait_s: ClassVar[float] = 300.0
    max_attempts: ClassVar[int] = 3
    # Lifecycle: how long warm_up may take before the version is FAILED
    warm_up_timeout_s: ClassVar[float] = 60.0
    # Retry, timeout, bulkhead, fallback, breaker (agents.resilience; docs/resilience.md).
    # retry.max_attempts, when set, wins over max_attempts above.
    resilience: ClassVar[Resilience] = Resilience()
    # Execution mode (agents.lifecycle): "pool" (the shared workers) or "dedicated" (worker
    # processes of its own, dedicated_workers of them, started and stopped by the lifecycle)
    execution_mode: ClassVar[str] = "pool"
    dedicated_workers: ClassVar[int] = 1
    # Health probes (agents.lifecycle.health): how often each declared probe runs, and its limit
    probe_interval_s: ClassVar[float] = 10.0
    probe_timeout_s: ClassVar[float] = 5.0

    @abstractmethod
    async def run(self, input: I, ctx: RunContext) -> O: ...

    async def warm_up(self) -> None:
        """Prime caches, load models or data, open pools: runs while the version
        is WARMING_UP, within ``warm_up_timeout_s``; raising fails the deploy."""
        return None

    # Health probes: override the ones the agent needs. Each runs in every worker
    # serving the agent, every ``probe_interval_s``, within ``probe_timeout_s``;
    # False, an exception or the timeout is a failure.

    async def startup_probe(self) -> bool:
        """Has the agent started in this worker? Until it first says so, the worker
        takes none of its tasks (the other probes wait for it)."""
        return True

    async def readiness_probe(self) -> bool:
        """May the agent take tasks in this worker now? While it says no, the
        worker takes none of them (others may); what it holds goes back to the queue."""
        return True

    async def liveness_probe(self) -> bool:
        """Is the agent healthy at all? A failing one makes the agent's health read
        ``degraded`` (``agent-factory agent status``); it still takes tasks."""
        return True

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Key, version, description and JSON schemas: a new dict each call (add to it
        freely); the schemas inside are built once per class and shared (read them only)."""
        return dict(_description(cls))


@functools.cache
def _description(agent: type[Agent[Any, Any]]) -> dict[str, Any]:
    # Rendering the schemas is most of what GET /api/v1/agents cost (1.6 ms of it).
    return {
        "key": agent.key,
        "version": agent.version,
        "description": agent.description,
        "input_schema": agent.Input.model_json_schema(),
        "output_schema": agent.Output.model_json_schema(),
        "config_schema": agent.Config.model_json_schema() if agent.Config is not None else None,
    }

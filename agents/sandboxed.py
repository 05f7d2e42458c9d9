"""Pool mode with the sandbox: each task an agent runs is one invocation in a
fresh, confined child of the agent's warm template (:mod:`agents.sandbox`).

The child validates the input against the agent's model and runs it; the
worker gets its output or its failure, and its audit record, which rides on
the finished event (``TaskContext.audit``) for metering. An ``input_error``
is permanent (no retry can fix it); every other category (``timeout``,
``resource_exceeded``, ``dependency_failure``, ``internal_error``) is retried
by the queue with the agent's backoff, as an exception of an in-process agent
is. Progress reports (``ctx.report_progress``) are not carried out of the
child; the run's configuration (``ctx.config``) is carried in. The resilience
block applies in full: its queue parts (retries, bulkhead) as always, its
``timeout_s`` as the invocation's wall-clock limit, and its breaker and
fallback chain around the invocation (:func:`agents.runtime.through` runs the
agent and its fallback agents as sandbox invocations).
"""

from __future__ import annotations

import time
from typing import Any, Final

from opentelemetry.trace import Status, StatusCode
from prometheus_client import Counter, Histogram

from agents.calls import Caller
from agents.configs import RunConfig
from agents.contract import Agent, RunContext
from agents.errors import AgentError
from agents.sandbox import InvocationAudit, InvocationResult, Sandbox, SandboxConfig, SandboxLimits
from mesh import trace
from mesh.queue.worker import Handler, PermanentError, TaskContext

__all__ = ["SandboxedRunFailed", "sandbox_config", "sandboxed_handler", "spec_of"]

# What the sandbox measured of each invocation, in the worker pool that asked for it.
INVOCATIONS: Final = Counter(
    "af_sandbox_invocations_total",
    "Sandboxed invocations by outcome: ok, or the error category",
    ["agent", "outcome"],
)
CPU_SECONDS: Final = Histogram(
    "af_sandbox_cpu_seconds", "CPU time of an invocation's main process", ["agent"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)  # fmt: skip
MEMORY_BYTES: Final = Histogram(
    "af_sandbox_memory_peak_bytes",
    "An invocation's peak memory: what its control group charged, else its main process's peak RSS",
    ["agent"], buckets=tuple(float(2**20 * mib) for mib in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)),
)  # fmt: skip


def _observe(audit: InvocationAudit) -> None:
    INVOCATIONS.labels(audit.agent, audit.error.value if audit.error else "ok").inc()
    CPU_SECONDS.labels(audit.agent).observe(audit.cpu_ms / 1000)
    peak = audit.memory_peak_bytes if audit.memory_peak_bytes is not None else audit.peak_rss_bytes
    MEMORY_BYTES.labels(audit.agent).observe(peak)


class SandboxedRunFailed(AgentError):
    """A sandboxed run failed in a way a retry may fix (the queue retries it)."""

    def __init__(self, agent: str, category: str, error: str | None) -> None:
        super().__init__(f"{agent}: {category}: {error or 'no detail'}")
        self.category = category


def spec_of(agent: Agent[Any, Any]) -> str:
    """``module:Class`` of ``agent``, as its template imports it."""
    cls = type(agent)
    return f"{cls.__module__}:{cls.__qualname__}"


def sandbox_config(agents: list[Agent[Any, Any]], **options: Any) -> SandboxConfig:
    """One template for ``agents`` (their classes must be importable by name)."""
    for agent in agents:
        if "<locals>" in type(agent).__qualname__:
            raise AgentError(f"{agent.key}: a class defined inside a function cannot run sandboxed")
    return SandboxConfig(agents=[spec_of(agent) for agent in agents], **options)


def sandboxed_handler(
    agent: Agent[Any, Any], sandbox: Sandbox, config: RunConfig | None = None, caller: Caller | None = None
) -> Handler:
    """``agent``'s queue handler through ``sandbox``; ``config``: where ``ctx.config`` comes from;
    ``caller``: where the child's ``ctx.call`` goes (relayed: :mod:`agents.sandbox.relay`)."""
    timeout_s = getattr(getattr(agent, "resilience", None), "timeout_s", None)
    limits: SandboxLimits | None = None
    if timeout_s:
        limits = sandbox.config.limits.model_copy(update={"timeout_s": float(timeout_s)})

    async def handle(task: TaskContext) -> Any:
        ctx = RunContext(run_id=task.run_id, tenant=task.tenant, attempt=task.attempt,
                         routing_key=task.routing_key, _usage=task.report_usage,
                         config=config.values(task.tenant) if config is not None else {},
                         _calls=caller.site(task) if caller is not None else None)  # fmt: skip
        started_ns = time.time_ns()
        result = await sandbox.invoke(agent.key, task.input if task.input is not None else {}, ctx,
                                      limits=limits)  # fmt: skip
        if trace.recording():
            _sandbox_spans(started_ns, time.time_ns(), result)
        task.audit = result.audit.model_dump(mode="json")
        _observe(result.audit)
        if result.ok:
            return result.output
        category = result.audit.error
        assert category is not None
        if category.permanent:
            raise PermanentError(f"{agent.key}: {result.error}")
        raise SandboxedRunFailed(agent.key, category.value, result.error)

    return handle


def _sandbox_spans(started_ns: int, ended_ns: int, result: InvocationResult) -> None:
    """Two children of the attempt's span: ``sandbox.start`` (handing the run to a warm
    child) and ``sandbox.run`` (the child, fork to reaped: the audit's ``duration_ms``).
    Drawn after the invocation from its times, so nothing crosses into the child."""
    run_ns = min(int(result.audit.duration_ms * 1_000_000), ended_ns - started_ns)
    tracer = trace.tracer()
    attributes = {"af.agent": result.audit.agent, "af.sandbox.invocation": result.audit.invocation_id}
    tracer.start_span("sandbox.start", attributes=attributes, start_time=started_ns).end(ended_ns - run_ns)
    run = tracer.start_span("sandbox.run", attributes=attributes, start_time=ended_ns - run_ns)
    if result.audit.error is not None:
        run.set_attribute("af.error.category", result.audit.error.value)
        run.set_status(Status(StatusCode.ERROR, result.error or result.audit.error.value))
    run.end(ended_ns)

"""Run agents on the task queue: the bridge from :mod:`mesh.queue.worker` to :class:`Agent`.

Bad input is a permanent error (no retry can fix it). Everything else follows
the agent's resilience block (:mod:`agents.resilience`): its retry policy and
bulkhead become the lanes' queue settings (:func:`~agents.resilience.retries.queue_config`),
and when it declares a timeout, a breaker, a fallback chain or a narrower
``retry.on``, the handler runs ``run`` under :class:`~agents.resilience.guard.AgentGuard`.
An agent that declares none of those gets the plain handler: no extra await,
nothing allocated per call beyond its context. On a sandboxed worker the guard
runs the agent (and its fallback agents) through the sandbox
(:data:`~agents.resilience.guard.Invoke`), so the block holds there too.

Configuration (:mod:`agents.configs`): every worker follows ``af_config`` live
(a :class:`~mesh.queue.agent_config.ConfigWatch` started before its first
pull); a task whose agent's kill switch is on for its tenant is not started
(a permanent failure: dead-lettered, replayable), and a run reads its
tenant's merged config as ``ctx.config`` (a sandboxed one too: it is carried
into the child).
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError

from agents.calls import Caller
from agents.configs import RunConfig
from agents.contract import Agent, RunContext
from agents.lifecycle.health import HealthProbes
from agents.registry import Registry
from agents.resilience.guard import AgentGuard, Invoke
from agents.resilience.retries import queue_config
from agents.sandbox import Sandbox
from agents.sandboxed import sandboxed_handler
from mesh.queue.agent_config import ConfigWatch
from mesh.queue.worker import AgentQueueConfig, Handler, PermanentError, TaskContext, TaskWorker

__all__ = ["agent_handler", "through", "worker_for"]


def agent_handler(
    agent: Agent[Any, Any],
    registry: Registry | None = None,
    invoke: Invoke | None = None,
    config: RunConfig | None = None,
    caller: Caller | None = None,
) -> Handler:
    """The queue handler of ``agent``. ``registry``: where its fallback agents are
    found (:class:`~agents.resilience.ResilienceConfigError` if one is missing);
    ``invoke``: run it elsewhere (the sandbox) under its guard instead of in-process;
    ``config``: where ``ctx.config`` comes from (None: an empty dict); ``caller``:
    where ``ctx.call`` sends its runs (None: an agent of this handler cannot call)."""
    if invoke is not None:
        return _elsewhere(AgentGuard(agent, registry, invoke=invoke), config, caller)
    guard = AgentGuard(agent, registry) if agent.resilience.enforced_in_handler else None

    async def handle(task: TaskContext) -> Any:
        try:
            parsed = agent.Input.model_validate(task.input)
        except ValidationError as exc:
            raise PermanentError(f"invalid input for {agent.key}: {exc}") from exc
        ctx = RunContext(
            run_id=task.run_id, tenant=task.tenant, attempt=task.attempt, routing_key=task.routing_key,
            config=config.values(task.tenant) if config is not None else {},
            _progress=task.report_progress, _usage=task.report_usage,
            _calls=caller.site(task) if caller is not None else None,
        )  # fmt: skip
        if guard is not None:
            return await guard.call(task, parsed, ctx)
        output = await agent.run(parsed, ctx)
        return output.model_dump(mode="json")

    return handle


def _elsewhere(guard: AgentGuard, config: RunConfig | None, caller: Caller | None) -> Handler:
    async def handle(task: TaskContext) -> Any:
        ctx = RunContext(run_id=task.run_id, tenant=task.tenant, attempt=task.attempt,
                         routing_key=task.routing_key, _usage=task.report_usage,
                         config=config.values(task.tenant) if config is not None else {},
                         _calls=caller.site(task) if caller is not None else None)  # fmt: skip
        return await guard.call(task, None, ctx)

    return handle


def through(sandbox: Sandbox, watch: ConfigWatch | None = None, caller: Caller | None = None) -> Invoke:
    """Run any agent of ``sandbox``'s template as one confined invocation
    (:func:`~agents.sandboxed.sandboxed_handler`), for :class:`AgentGuard`;
    ``watch``: each agent's ``ctx.config`` (its own, a fallback's too); ``caller``: its calls."""
    handlers: dict[str, Handler] = {}

    async def invoke(agent: Agent[Any, Any], task: TaskContext, ctx: RunContext) -> Any:
        handler = handlers.get(agent.key)
        if handler is None:
            config = RunConfig(agent, watch) if watch is not None else None
            handler = handlers[agent.key] = sandboxed_handler(agent, sandbox, config, caller)
        return await handler(task)

    return invoke


def _switched(config: RunConfig, handler: Handler) -> Handler:
    """``handler``, not started while the agent's kill switch is on for the task's tenant."""

    async def handle(task: TaskContext) -> Any:
        config.check(task.tenant)
        return await handler(task)

    return handle


def worker_for(
    nc: Client,
    js: JetStreamContext,
    registry: Registry,
    agents: list[str] | None = None,
    concurrency: int = 16,
    name: str = "worker",
    sandbox: Sandbox | None = None,
    config_watch: bool = True,
    **options: Any,
) -> TaskWorker:
    """A worker serving ``agents`` (default: all in ``registry``): agent affinity.
    Each agent's resilience block applies (its lanes' retry and bulkhead, its guard).
    With ``sandbox`` (its template holding these agents), every task runs in a
    fresh confined child (:mod:`agents.sandboxed`); the sandbox starts and stops
    with the worker. Agents that declare health probes get them run
    (:mod:`agents.lifecycle.health`). ``config_watch``: follow ``af_config`` (the
    kill switch, ``ctx.config``; :mod:`agents.configs`)."""
    keys = agents or registry.keys()
    watch = ConfigWatch(nc, js, name=name) if config_watch else None
    caller = Caller(nc, js, registry)
    invoke = through(sandbox, watch, caller) if sandbox else None
    handlers: dict[str, tuple[AgentQueueConfig, Handler]] = {}
    for key in keys:
        agent = registry.get(key)
        config = RunConfig(agent, watch) if watch is not None else None
        if sandbox is None:
            handler = agent_handler(agent, registry, config=config, caller=caller)
        elif agent.resilience.enforced_in_handler:
            handler = agent_handler(agent, registry, invoke, config, caller)
        else:  # nothing acts around the invocation: the sandbox's handler alone
            handler = sandboxed_handler(agent, sandbox, config, caller)
        handlers[key] = (queue_config(agent), _switched(config, handler) if config is not None else handler)
    # The watch starts with the worker, before its first pull: a tenant's kill switch,
    # pinned version and mode hold from the first task on.
    worker = TaskWorker(nc, js, handlers, concurrency=concurrency, name=name, config=watch, **options)
    worker.attach(caller)
    if sandbox is not None:
        worker.attach(sandbox)
    worker.attach(HealthProbes(worker, [registry.get(key) for key in keys]))
    return worker

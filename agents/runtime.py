"""Run agents on the task queue: the bridge from :mod:`mesh.queue.worker` to :class:`Agent`.

Bad input is a permanent error (no retry can fix it); anything else an
agent raises is retried by the queue with backoff.
"""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError

from agents.contract import Agent, RunContext
from agents.registry import Registry
from mesh.queue.worker import AgentQueueConfig, Handler, PermanentError, TaskContext, TaskWorker

__all__ = ["agent_handler", "worker_for"]


def agent_handler(agent: Agent[Any, Any]) -> Handler:
    async def handle(task: TaskContext) -> Any:
        try:
            parsed = agent.Input.model_validate(task.input)
        except ValidationError as exc:
            raise PermanentError(f"invalid input for {agent.key}: {exc}") from exc
        ctx = RunContext(
            run_id=task.run_id, tenant=task.tenant, attempt=task.attempt,
            routing_key=task.routing_key, _progress=task.report_progress,
        )  # fmt: skip
        output = await agent.run(parsed, ctx)
        return output.model_dump(mode="json")

    return handle


def worker_for(
    nc: Client,
    js: JetStreamContext,
    registry: Registry,
    agents: list[str] | None = None,
    concurrency: int = 16,
    name: str = "worker",
    **options: Any,
) -> TaskWorker:
    """A worker serving ``agents`` (default: all in ``registry``): agent affinity."""
    keys = agents or registry.keys()
    handlers = {}
    for key in keys:
        agent = registry.get(key)
        cfg = AgentQueueConfig(key, ack_wait_s=agent.ack_wait_s, max_attempts=agent.max_attempts)
        handlers[key] = (cfg, agent_handler(agent))
    return TaskWorker(nc, js, handlers, concurrency=concurrency, name=name, **options)

"""A worker process for the breaker tests: ``python breaker_worker.py NATS_URL NAME AGENT...``.

Serves each AGENT (priority NORMAL only) with a handler that announces each start
on core NATS (``test.started.<agent>``, body ``<name> <run id>``), and announces
each change of its lanes (``test.lanes.<name>``, body ``<agent> taking|stopped``)
once the worker has applied it. Ready: ``test.ready.<name>``. SIGTERM drains it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mesh.envelope import Priority
from mesh.queue.breakers import BreakerState
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import serve_until_sigterm


class AnnouncingWorker(TaskWorker):
    """A TaskWorker that says when its lanes of an agent stop or start taking tasks."""

    def _on_breaker(self, agent: str, state: BreakerState) -> None:
        super()._on_breaker(agent, state)
        stopped = all(lane.tripped for lane in self.lanes if lane.agent == agent)
        body = f"{agent} {'stopped' if stopped else 'taking'}".encode()
        asyncio.get_running_loop().create_task(self.nc.publish(f"test.lanes.{self.name}", body))


async def main(url: str, name: str, agents: list[str]) -> None:
    nc = await connect(url, name=f"breaker-worker-{name}")
    js = await jetstream(nc)

    async def handler(ctx: TaskContext) -> Any:
        await nc.publish(f"test.started.{ctx.agent}", f"{name} {ctx.run_id}".encode())
        return {}

    served = {a: (AgentQueueConfig(a, priorities=(Priority.NORMAL,)), handler) for a in agents}
    worker = AnnouncingWorker(nc, js, served, concurrency=4, idle_poll_s=0.5, name=name)
    await serve_until_sigterm(nc, worker, f"test.ready.{name}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))

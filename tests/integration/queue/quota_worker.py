"""A worker process for the concurrency quota tests:
``python quota_worker.py NATS_URL NAME ACK_WAIT_S AGENT...``.

Serves each AGENT (priority NORMAL only, concurrency 4) with a handler that
announces its start on core NATS (``test.started.<name>``, body the run id),
holds for ``input["hold"]`` seconds (``input["first_hold"]`` on a first
attempt, if given) and returns when it ran: ``{"start", "end", "worker"}``
(epoch seconds). Ready: ``test.ready.<name>``. SIGTERM drains it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mesh.envelope import Priority
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import serve_until_sigterm


async def main(url: str, name: str, ack_wait_s: float, agents: list[str]) -> None:
    nc = await connect(url, name=f"quota-worker-{name}")
    js = await jetstream(nc)

    async def handler(ctx: TaskContext) -> Any:
        start = time.time()
        await nc.publish(f"test.started.{name}", ctx.run_id.encode())
        hold = ctx.input.get("first_hold", ctx.input["hold"]) if ctx.attempt == 1 else ctx.input["hold"]
        await asyncio.sleep(hold)  # the work itself: it takes this long
        return {"start": start, "end": time.time(), "worker": name}

    lanes = (Priority.NORMAL,)
    served = {a: (AgentQueueConfig(a, ack_wait_s=ack_wait_s, priorities=lanes), handler) for a in agents}
    worker = TaskWorker(nc, js, served, concurrency=4, idle_poll_s=0.5, name=name)
    await serve_until_sigterm(nc, worker, f"test.ready.{name}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]))

"""A worker process for fault tests: ``python effect_worker.py NATS_URL AGENT ACK_WAIT CONCURRENCY``.

Its handler reports progress first if ``input["progress"]`` is set, announces
each start on core NATS (``test.started.<agent>``, body ``<run id> <attempt>``),
sleeps ``input["sleep"]`` seconds, reports progress if ``input["progress_after"]``
is set, and returns.
SIGTERM drains it (exit 0), SIGKILL is the crash.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import serve_until_sigterm


async def main(url: str, agent: str, ack_wait: float, concurrency: int) -> None:
    nc = await connect(url, name=f"effect-worker-{agent}")
    js = await jetstream(nc)

    async def handler(ctx: TaskContext) -> Any:
        if ctx.input.get("progress"):
            await ctx.report_progress(float(ctx.input["progress"]))
        await nc.publish(f"test.started.{agent}", f"{ctx.run_id} {ctx.attempt}".encode())
        await asyncio.sleep(float(ctx.input.get("sleep", 0)))
        if ctx.input.get("progress_after"):
            await ctx.report_progress(float(ctx.input["progress_after"]))
        return {"done": ctx.run_id}

    cfg = AgentQueueConfig(agent, ack_wait_s=ack_wait, max_attempts=5, priorities=(2,))
    worker = TaskWorker(nc, js, {agent: (cfg, handler)}, concurrency=concurrency, idle_poll_s=0.5)
    await serve_until_sigterm(nc, worker, f"test.ready.{agent}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))

"""Slow operation kinds for the restart tests, and a gateway in a process of its own
that starts them, for a test to kill -9 midway::

    python -m tests.integration.gateway.operation_gateway NATS_URL DATABASE_URL STEPS

prints the ids of the operations it started (a JSON list), then runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents.registry import Registry
from gateway.app import Gateway, Parts
from gateway.operations import OperationContext, OperationKind
from gateway.settings import Settings

RESUMABLE = "test.steps"
ONCE = "test.once"
NOT_RESUMABLE = "test.once is never run twice"
#: Quick to notice a stopped gateway: heartbeats every 0.2 s, taken over after 1.5 s of silence.
FAST = {"operation_heartbeat_s": 0.2, "operation_stale_s": 1.5}
BARE = Parts(recorder=False, run_index=False, billing=False, maintenance=False, scheduler=False, serve=False,
             dedicated=False)  # fmt: skip


def slow_kinds(step_s: float) -> list[OperationKind]:
    """Two kinds that take ``steps`` steps of ``step_s``: one safe to run again, one not."""

    async def steps(ctx: OperationContext) -> dict[str, Any]:
        count = int(ctx.op.request["steps"])
        for i in range(count):
            await asyncio.sleep(step_s)
            await ctx.progress(100 * (i + 1) / count, f"step {i + 1} of {count}")
        return {"steps": count, "attempt": ctx.op.attempts}

    return [
        OperationKind(RESUMABLE, steps, resumable=True),
        OperationKind(ONCE, steps, not_resumable=NOT_RESUMABLE),
    ]


def slow_gateway(step_s: float) -> Gateway:
    return Gateway(Settings(**FAST), Registry([]), BARE, kinds=slow_kinds(step_s))


async def main(nats_url: str, database_url: str, steps: int) -> None:
    gateway = slow_gateway(0.1)
    await gateway.start(nats_url, database_url, token=None)
    assert gateway.operations is not None
    started = []
    for kind in (RESUMABLE, ONCE):
        op, _ = await gateway.operations.submit(kind, target="t", request={"steps": steps}, tenant=None,
                                                created_by="test")  # fmt: skip
        started.append(op.id)
    print(json.dumps(started), flush=True)
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))

"""A process serving one agent on the mesh's request/reply that asks the next agent, if
any, before answering: ``python -m tests.integration.observability.chain_agent NAME [NEXT]``.

Tracing as a platform process does it (``AF_TRACE_*``, :func:`gateway.telemetry.tracing`);
it says ``ready`` on ``af.test.ready.<NAME>`` once it serves."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

from gateway.settings import Settings
from gateway.telemetry import tracing
from mesh.channels.messaging import Mesh
from mesh.envelope import Envelope
from mesh.wire.connection import connect


async def main(name: str, following: str | None) -> None:
    nc = await connect(os.environ["AF_NATS_URL"], name=name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with tracing(Settings(), name):
        async with Mesh(nc, agent=name) as mesh:

            async def answer(request: Envelope) -> Any:
                if following is None:
                    return {"path": [name]}
                reply = await mesh.request(following, request.payload, timeout=10.0)
                return {"path": [name, *reply.payload["path"]]}

            await mesh.serve(name, answer)
            await nc.publish(f"af.test.ready.{name}", b"")
            await stop.wait()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))

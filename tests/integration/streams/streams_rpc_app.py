"""Faust's ``advanced/rpc`` example on the nats:// transport: an agent that
multiplies by 100, asked from a separate client-only process.

Ask from a client (prints the answer as JSON, exits 0)::

    python streams_rpc_app.py <app id> <nats url> <value>
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import faust


def build_app(app_id: str, nats_url: str) -> tuple[faust.App, Any]:
    app = faust.App(
        app_id,
        broker=f"{nats_url}?session_timeout=4&heartbeat=0.5",
        store="memory://",
        web_enabled=False,
        topic_partitions=2,
        value_serializer="json",
    )

    @app.agent(app.topic(f"{app_id}-requests", value_serializer="json"))
    async def mul(stream: faust.StreamT[Any]) -> AsyncIterator[Any]:
        async for value in stream:
            yield value * 100

    return app, mul


async def ask(app_id: str, nats_url: str, value: int) -> Any:
    app, mul = build_app(app_id, nats_url)
    try:
        return await mul.ask(value=value)  # starts the app as a client (client_only)
    finally:
        await app.stop()


if __name__ == "__main__":
    answer = asyncio.run(ask(sys.argv[1], sys.argv[2], int(sys.argv[3])))
    print(json.dumps(answer))

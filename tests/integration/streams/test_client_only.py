"""A client-only Faust app (``agent.ask`` from a command, no group) gets its replies.

Faust's ``advanced/rpc`` example: a worker serves ``mul``; a separate
process asks it, as ``faust -A rpc x100 7`` does. Before the fix the client
never read its reply topic (no group, so no partitions) and waited forever.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from nats.js import JetStreamContext
from streams_helpers import eventually, topic_declared
from streams_rpc_app import build_app
from streams_workers import HERE, ROOT, running


async def _ask_from_another_process(app_id: str, nats_url: str, value: int) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "streams_rpc_app.py"), app_id, nats_url, str(value),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(
            f"the client got no answer within 60 s; its log:\n{err.decode()[-3000:]}"
        ) from None
    return proc.returncode or 0, out.decode(), err.decode()


async def test_ask_from_a_client_only_process_gets_the_workers_reply(
    nats_url: str, js: JetStreamContext, app_id: str
) -> None:
    app, _ = build_app(app_id, nats_url)
    async with running(app):
        await eventually(lambda: topic_declared(js, f"{app_id}-requests", 2), 30, "topic declared")
        first = await _ask_from_another_process(app_id, nats_url, 7)
        assert first[0] == 0, first[2][-3000:]
        assert json.loads(first[1]) == 700
        # A second client (a reply topic of its own) is answered too.
        second = await _ask_from_another_process(app_id, nats_url, -3)
        assert second[0] == 0, second[2][-3000:]
        assert json.loads(second[1]) == -300

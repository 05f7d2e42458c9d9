"""Channels over the API and the CLI's tail, against the real mesh."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from aiohttp.test_utils import TestClient
from nats.aio.client import Client

from mesh.envelope import Envelope
from mesh.messaging import Mesh
from tests.helpers import unique


async def test_channels_route_lists_subscribers_and_backlog(api: TestClient[Any, Any], nc: Client) -> None:
    name = unique("carbon")

    async def ignore(env: Envelope) -> None:
        return None

    async with Mesh(nc, agent="calculator") as mesh:
        await mesh.subscribe(f"ephemeral:{name}.health", ignore)
        await mesh.subscribe(f"durable:{name}", ignore)
        resp = await api.get("/api/v1/channels")
        assert resp.status == 200
        listed = {c["name"]: c for c in (await resp.json())["channels"]}
        assert [s["agent"] for s in listed[f"ephemeral:{name}.health"]["subscribers"]] == ["calculator"]
        assert listed[f"durable:{name}"]["kind"] == "DURABLE"
        assert listed[f"durable:{name}"]["subject"] == f"af.ch.{name}"
    assert (await api.get("/api/v1/channels", headers={"Authorization": ""})).status == 401


async def test_cli_tail_prints_messages_as_json_lines(nc: Client, nats_url: str) -> None:
    name = unique("tail")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "channels", "tail", f"ephemeral:{name}", "--count", "2",
        env={"AF_NATS_URL": nats_url, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    output = asyncio.ensure_future(proc.stdout.read())  # until the tail exits
    async with Mesh(nc, agent="emitter") as mesh:
        async with asyncio.timeout(30):
            while not output.done():  # publish until the tail has seen two
                await mesh.publish_event(f"ephemeral:{name}", {"kwh": 12.5})
                await asyncio.wait([output], timeout=0.2)
    out = output.result()
    assert await proc.wait() == 0
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 2 and lines[0]["payload"] == {"kwh": 12.5}
    bad = subprocess.run(  # noqa: ASYNC221 - a one-shot CLI call
        [sys.executable, "-m", "gateway.cli", "channels", "tail", "nonsense:x"],
        env={"AF_NATS_URL": nats_url}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr

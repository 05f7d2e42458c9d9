"""Channels over the API and the CLI's tail, against the real mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway.commands.channels import channels
from gateway.commands.common import Ctx
from mesh.channels.messaging import Mesh
from mesh.channels.registry import CHANNELS_STREAM, Channel
from mesh.embedded import NatsServer, find_free_port
from mesh.envelope import Envelope
from mesh.wire.connection import connect
from tests.helpers import unique

from .conftest import TOKEN


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
    assert proc.stderr is not None and await proc.stderr.read() == b""  # no traceback at the end
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 2 and lines[0]["payload"] == {"kwh": 12.5}
    bad = subprocess.run(  # noqa: ASYNC221 - a one-shot CLI call
        [sys.executable, "-m", "gateway.cli", "channels", "tail", "nonsense:x"],
        env={"AF_NATS_URL": nats_url}, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


async def test_channels_ls_shows_a_backlog_nobody_subscribed_to(
    api: TestClient[Any, Any], nc: Client, js: JetStreamContext, tmp_path: Path
) -> None:
    name = unique("orders")
    async with Mesh(nc, agent="shop") as mesh:
        for n in range(3):
            await mesh.send_durable(f"durable:{name}", {"n": n})
    try:
        listed = {c["name"]: c for c in (await (await api.get("/api/v1/channels")).json())["channels"]}
        row = listed[f"durable:{name}"]
        assert (row["subscribers"], row["pending"], row["ack_pending"]) == ([], 3, 0)
        ctx = Ctx(tmp_path, str(api.make_url("/")).rstrip("/"), TOKEN, verbose=False)
        table = await asyncio.to_thread(CliRunner().invoke, channels, ["ls"], obj=ctx)
        assert table.exit_code == 0, table.output
        [line] = [line for line in table.output.splitlines() if line.startswith(f"durable:{name} ")]
        assert line.split()[1:] == ["DURABLE", "0", "3", "0"]
    finally:
        await js.purge_stream(CHANNELS_STREAM, subject=Channel.parse(f"durable:{name}").subject)


@contextlib.asynccontextmanager
async def _tail(url: str, channel: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`agent-factory channels tail CHANNEL`, killed at the end if it is still running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "channels", "tail", channel,
        env={"AF_NATS_URL": url, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _first_line(proc: asyncio.subprocess.Process, nc: Client, channel: str) -> bytes:
    """Publish on ``channel`` until the tail prints (it is subscribed then)."""
    assert proc.stdout is not None
    line = asyncio.ensure_future(proc.stdout.readline())
    async with Mesh(nc, agent="emitter") as mesh, asyncio.timeout(30):
        while not line.done():
            await mesh.publish_event(channel, {"kwh": 1})
            await asyncio.wait([line], timeout=0.2)
    return line.result()


async def _stderr_at_exit(proc: asyncio.subprocess.Process, timeout: float = 30) -> list[str]:
    assert proc.stderr is not None
    async with asyncio.timeout(timeout):
        err = await proc.stderr.read()
        await proc.wait()
    return err.decode().strip().splitlines()


async def test_cli_tail_ctrl_c_ends_with_one_line(nc: Client, nats_url: str) -> None:
    channel = f"ephemeral:{unique('ctrl-c')}"
    async with _tail(nats_url, channel) as proc:
        assert json.loads(await _first_line(proc, nc, channel))["payload"] == {"kwh": 1}
        proc.send_signal(signal.SIGINT)
        [said] = await _stderr_at_exit(proc)
    assert proc.returncode == 0
    assert re.fullmatch(rf"stopped tailing {channel}: \d+ message\(s\)", said), said


async def test_cli_tail_ends_with_one_line_when_nats_goes_away(tmp_path: Path) -> None:
    channel = f"ephemeral:{unique('gone')}"
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        own = await connect(server.url, name="pytest-own-server")
        async with _tail(server.url, channel) as proc:
            try:
                await _first_line(proc, own, channel)
            finally:
                await own.close()
            server.stop()
            said = await _stderr_at_exit(proc)  # the tail rides out a short outage, then gives up
    finally:
        server.stop()
    assert proc.returncode == 1
    assert len(said) == 1 and said[0].startswith("Error: lost the connection to NATS at"), said


async def test_cli_tail_refuses_a_bad_name_or_server_in_one_line(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "gateway.cli", "--data-dir", str(tmp_path), "channels", "tail"]
    # The name is checked before anything else: no NATS is needed to hear it is wrong.
    bad = subprocess.run([*cli, "orders"], env={"PATH": "/usr/bin:/bin"},  # noqa: ASYNC221
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: channel 'orders' must start with 'durable:' or 'ephemeral:'"
    ]
    nobody = f"nats://127.0.0.1:{find_free_port()}"
    down = subprocess.run([*cli, "durable:orders"], env={"AF_NATS_URL": nobody},  # noqa: ASYNC221
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert down.returncode == 1
    [said] = down.stderr.strip().splitlines()
    assert said.startswith(f"Error: cannot connect to NATS at {nobody}"), said

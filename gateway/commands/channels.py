"""``agent-factory channels ls|tail NAME``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, Final

import click
from nats.errors import ConnectionClosedError

from gateway.commands.common import CliError, Ctx, _emit, _run, output_option
from gateway.state import read_state
from mesh.channels.errors import InvalidChannelName
from mesh.channels.registry import Channel
from mesh.channels.registry import tail as tail_channel
from mesh.errors import ConnectionFailed
from mesh.wire.connection import connect, redacted

__all__ = ["channels"]

log = logging.getLogger(__name__)

# A tail rides out a nats-server restart (attempts 0.25 s apart), then ends
# with one line rather than retry for ever.
TAIL_RECONNECTS: Final = 20


@click.group()
def channels() -> None:
    """Messaging channels: who listens, what flows."""


@channels.command("ls")
@output_option
@click.pass_obj
def ls(obj: Ctx, output: str) -> None:
    """Channels with their subscribers (and backlog, for durable ones)."""

    async def go() -> Any:
        async with obj.client() as api:
            return await api.request("GET", "/api/v1/channels")

    data = _run(go())
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'CHANNEL':<40}{'KIND':<11}{'SUBSCRIBERS':>12}{'PENDING':>9}{'UNACKED':>9}")
    for c in data["channels"]:
        pending = "" if c["pending"] is None else c["pending"]
        unacked = "" if c["ack_pending"] is None else c["ack_pending"]
        click.echo(f"{c['name']:<40}{c['kind']:<11}{len(c['subscribers']):>12}{pending:>9}{unacked:>9}")


@channels.command()
@click.argument("name")
@click.option("--count", type=int, default=0, help="Stop after this many messages (0: never).")
@click.pass_obj
def tail(obj: Ctx, name: str, count: int) -> None:
    """Print messages on channel NAME as they flow (JSON lines); never consumes them.

    NAME is e.g. durable:carbon.calculate or ephemeral:agent.health (wildcards allowed).
    Talks to NATS directly: the URL comes from AF_NATS_URL or the data dir. Ctrl-C
    stops it; a connection lost for good ends it with exit code 1.
    """
    try:
        channel = Channel.parse(name)
    except InvalidChannelName as exc:
        raise CliError(str(exc)) from exc
    url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not url:
        raise CliError("no NATS URL: set AF_NATS_URL or start `agent-factory up`")
    seen = [0]
    try:
        asyncio.run(_tail(url, channel, count, seen))
    except KeyboardInterrupt:
        click.echo(f"stopped tailing {channel}: {seen[0]} message(s)", err=True)


async def _quiet(exc: Exception) -> None:
    log.info("nats connection error: %s", exc)  # the tail's last line says it, once


async def _tail(url: str, channel: Channel, count: int, seen: list[int]) -> None:
    """Print ``channel``'s messages until ``count`` (0: for ever); ``seen[0]`` counts them."""
    try:
        nc = await connect(url, name="agent-factory-tail", error_cb=_quiet,
                           max_reconnect_attempts=TAIL_RECONNECTS)  # fmt: skip
    except ConnectionFailed as exc:
        raise CliError(str(exc)) from exc
    try:
        # aclosing: the subscription ends before the connection does.
        async with contextlib.aclosing(tail_channel(nc, channel)) as messages:
            async for envelope in messages:
                click.echo(envelope.model_dump_json())
                seen[0] += 1
                if count and seen[0] >= count:
                    return
    except ConnectionClosedError:
        raise CliError(f"lost the connection to NATS at {redacted(url)} after {seen[0]} message(s)") from None
    finally:
        await nc.close()

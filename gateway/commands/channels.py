"""``agent-factory channels ls|tail NAME``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click

from gateway.commands.common import CliError, Ctx, _emit, _run, output_option

__all__ = ["channels"]


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
    Talks to NATS directly: the URL comes from AF_NATS_URL or the data dir.
    """
    import os

    from gateway.state import read_state

    url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not url:
        raise CliError("no NATS URL: set AF_NATS_URL or start `agent-factory up`")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_tail(url, name, count))


async def _tail(url: str, name: str, count: int) -> None:
    from mesh.channel_errors import InvalidChannelName
    from mesh.channels import tail as tail_channel
    from mesh.connection import connect

    nc = await connect(url, name="agent-factory-tail")
    seen = 0
    try:
        async for envelope in tail_channel(nc, name):
            click.echo(envelope.model_dump_json())
            seen += 1
            if count and seen >= count:
                break
    except InvalidChannelName as exc:
        raise CliError(str(exc)) from exc
    finally:
        await nc.close()

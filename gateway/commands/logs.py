"""``agent-factory logs [--agent A] [--run R] [--process P] [-f]``: the fleet's log
records from the ``AF_LOGS`` stream (gateway.telemetry.logs), read with an ordered
consumer, so reading takes nothing away from anyone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import click
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from gateway.commands.common import CliError, Ctx, output_option
from gateway.state import read_state
from mesh import names
from mesh.errors import ConnectionFailed
from mesh.wire.connection import connect, jetstream

__all__ = ["logs"]


@click.command()
@click.option("--agent", help="Only records about this agent's runs.")
@click.option("--run", "run_id", help="Only records about this run.")
@click.option("--process", help="Only this process's records (gateway, worker-0, …).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing records as they come (Ctrl-C stops).")
@output_option
@click.pass_obj
def logs(obj: Ctx, agent: str | None, run_id: str | None, process: str | None, follow: bool,
         output: str) -> None:  # fmt: skip
    """Print the fleet's log records (JSON lines with -o json), oldest first.

    Every platform process publishes its records to the AF_LOGS stream (kept a day
    or 256 MiB). Best effort: a process under pressure drops records and says how
    many (docs/observability.md). Talks to NATS directly: AF_NATS_URL or the data dir.
    """
    url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not url:
        raise CliError("no NATS URL: set AF_NATS_URL or start `agent-factory up`")
    wanted = {k: v for k, v in (("agent", agent), ("run_id", run_id)) if v}
    subject = names.log_subject(process) if process else f"{names.LOGS_PREFIX}.>"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_read(url, subject, wanted, follow, output))


def line_of(record: dict[str, Any]) -> str:
    """A record for people: time, level, process, logger, message, then its run."""
    text = f"{record.get('ts', '')} {record.get('level', ''):<7} {record.get('process', '')} " \
           f"{record.get('logger', '')}: {record.get('msg', '')}"  # fmt: skip
    if "run_id" in record:
        text += f"  [{record.get('agent')} run={record['run_id']} tenant={record.get('tenant')}"
        text += f" trace={record['trace_id']}]" if "trace_id" in record else "]"
    if "exc" in record:
        text += "\n" + str(record["exc"])
    return text


async def _read(url: str, subject: str, wanted: dict[str, str], follow: bool, output: str) -> None:
    try:
        nc = await connect(url, name="agent-factory-logs")
    except ConnectionFailed as exc:
        raise CliError(str(exc)) from exc
    try:
        js = await jetstream(nc)
        try:
            info = await js.stream_info(names.STREAM_LOGS)
        except NotFoundError:
            raise CliError(f"no {names.STREAM_LOGS} stream: `agent-factory up` provisions it") from None
        if not follow and not info.state.messages:
            return
        done = asyncio.Event()
        sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while not done.is_set():
                try:
                    msg = await sub.next_msg(timeout=None if follow else 2.0)
                except TimeoutError:
                    return  # nothing more came: caught up
                _print(msg.data, wanted, output)
                if not follow and msg.metadata.num_pending == 0:
                    return
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()


def _print(data: bytes, wanted: dict[str, str], output: str) -> None:
    try:
        record = json.loads(data)
    except ValueError:
        return
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in wanted.items()):
        return
    click.echo(json.dumps(record) if output == "json" else line_of(record))

"""``agent-factory processors``: run the stream processors (docs/processors.md).

One processor runs in this process (a Faust worker); several run as one child
process each, restarted if they die. Run the command on more hosts to add
replicas: replicas of a processor share ``af-executions``'s partitions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from gateway.commands.common import CliError, Ctx
from gateway.settings import Settings, processor_names
from gateway.state import read_state
from streams.processors import PROCESSORS

__all__ = ["processors"]


@click.command()
@click.option(
    "--only",
    default=None,
    help=f"Which processors, comma-separated: {', '.join(PROCESSORS) or 'none yet'} "
    "[default: AF_PROCESSORS, all].",
)
@click.option(
    "--replicas", type=click.IntRange(1, 5), default=None,
    help="Stream replicas of the processors' topics and tables [default: AF_STREAM_REPLICAS, 1].",
)  # fmt: skip
@click.option("--session-timeout", type=click.FloatRange(1.0, 300.0), default=6.0, show_default=True,
              help="Seconds without a heartbeat before a replica counts as dead "
                   "and its partitions move.")  # fmt: skip
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING"]))  # fmt: skip
@click.pass_obj
def processors(
    obj: Ctx, only: str | None, replicas: int | None, session_timeout: float, log_level: str
) -> None:
    """Run the stream processors: metering, the fleet-wide breaker, canary metrics.

    They read every finished execution (topic af-executions) and write their
    decisions to KV (af_budgets, af_breakers, af_canary_metrics), which workers
    and the gateway obey. `agent-factory up` starts them; Ctrl-C (SIGTERM)
    commits what was processed and stops.
    """
    nats_url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not nats_url:
        raise CliError("no NATS URL: set AF_NATS_URL or run `agent-factory up` first")
    settings = Settings()
    try:
        chosen = processor_names(only) if only is not None else settings.processor_names
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    if not chosen:
        raise CliError("no processors to run (AF_PROCESSORS is off, or --only named none)")
    replicas = replicas or settings.stream_replicas
    if len(chosen) == 1:
        try:
            _one(obj, settings, chosen[0], nats_url, replicas, session_timeout, log_level)
        except Exception as exc:
            if obj.verbose:
                raise
            raise CliError(f"processor {chosen[0]}: {exc}") from exc
        return
    asyncio.run(_several(chosen, nats_url, replicas, session_timeout, log_level))


def _one(
    obj: Ctx,
    settings: Settings,
    name: str,
    nats_url: str,
    replicas: int,
    session_timeout: float,
    log_level: str,
) -> None:
    """Run processor ``name`` here, traced and logging to ``AF_LOGS`` as the settings say,
    as every platform process does (docs/observability.md)."""
    from gateway.telemetry import LogStream, configure_logging, tracing  # noqa: PLC0415 (start-up time)
    from gateway.worker_metrics import serve_process_metrics  # noqa: PLC0415 (start-up time)
    from streams.processors.app import run_processor  # noqa: PLC0415 (start-up time: Faust)

    process = f"processor-{name}"
    # stderr as every platform process writes it (AF_LOG_FORMAT) at --log-level, and the
    # stream: Faust replaces the root logger's handlers, so they are handed to it.
    configure_logging(settings, process)
    stderr = list(logging.getLogger().handlers)
    log_stream = LogStream(process, settings.log_buffer) if settings.log_stream else None
    # Its registry on the gateway's /metrics, as a pool's (worker="processor-<name>").
    with tracing(settings, process), serve_process_metrics(obj.data_dir, process):
        run_processor(
            name, nats_url, replicas=replicas, loglevel=log_level, session_timeout_s=session_timeout,
            loghandlers=stderr, log_stream=log_stream,
        )  # fmt: skip


async def _several(
    chosen: list[str], nats_url: str, replicas: int, session_timeout: float, log_level: str
) -> None:
    from gateway.children import Children  # noqa: PLC0415 (start-up time)

    children = Children(lambda line: click.echo(line, err=True))
    env = {**os.environ, "AF_NATS_URL": nats_url}
    for name in chosen:
        argv = [sys.executable, "-m", "gateway.cli", "processors", "--only", name,
                "--replicas", str(replicas), "--session-timeout", str(session_timeout),
                "--log-level", log_level]  # fmt: skip
        children.add(f"processor-{name}", argv, env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await children.start()
    supervisor = asyncio.create_task(children.supervise())
    await stop.wait()
    supervisor.cancel()
    await children.terminate()

"""The ``agent-factory`` admin CLI.

The commands that start a process (``up``, ``worker``, ``bench``) import what
they run inside the command: the platform, Faust and the benchmarks cost
seconds to import, and ``agent-factory --help`` or ``runs ls`` should not pay
that. These are the only imports inside functions (ruff PLC0415 is on; each
one is marked), and none of them breaks an import cycle.

Readable tables for people, ``--output json`` for scripts, one-line errors
(``-v`` for tracebacks). The gateway URL and token come from the data dir
that ``up`` wrote (``--data-dir`` / ``AF_DATA_DIR``), unless given.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from gateway.commands.agent import agent
from gateway.commands.breakers import breakers
from gateway.commands.canary import canary
from gateway.commands.channels import channels
from gateway.commands.common import OUTPUTS, CliError, Ctx, _call, _emit, _run, output_option
from gateway.commands.config import config
from gateway.commands.costs import budget, costs, quota
from gateway.commands.logs import logs
from gateway.commands.ops import ops
from gateway.commands.processors import processors
from gateway.commands.queue import queue
from gateway.commands.runs import cancel, runs
from gateway.commands.schedule import schedule
from gateway.commands.tokens import tenant, token
from gateway.ports import PortInUse
from gateway.runtime import tune_gc
from gateway.settings import Settings
from gateway.state import read_state

__all__ = ["CliError", "Ctx", "_emit", "_run", "main", "output_option"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    envvar="AF_DATA_DIR",
    default=Path(".agent-factory"),
    show_default=True,
    help="Where `up` keeps its state (URLs, token, embedded data).",
)
@click.option("--api-url", envvar="AF_API_URL", help="Gateway URL (default: from the data dir).")
@click.option("--token", envvar="AF_API_TOKEN", help="API token (default: from the data dir).")
@click.option("-v", "--verbose", count=True,
              help="-v: log more (INFO) and show tracebacks; -vv: every detail (DEBUG).")  # fmt: skip
@click.option(
    "--output", "-o", type=OUTPUTS, default="table", show_default=True,
    help="table for people, json for scripts; for every command (its own -o wins).",
)  # fmt: skip
@click.pass_context
def cli(ctx: click.Context, data_dir: Path, api_url: str | None, token: str | None,
        verbose: int, output: str) -> None:  # fmt: skip
    """Agent Factory: run a fleet of agents on a NATS JetStream mesh.

    \b
    agent-factory -o json status    (or: agent-factory status -o json)
    """
    del output  # each command reads it back through output_option
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = Ctx(data_dir, api_url, token, verbose > 0)


@cli.command()
@click.option("--port", type=int, default=None, help="API port (default 8080, AF_PORT).")
@click.option("--host", default=None, help="API bind address (default 127.0.0.1, AF_HOST).")
@click.option("--workers", type=int, default=None, help="Worker pools to start (default 1).")
@click.option(
    "--data-dir", "data_dir", type=click.Path(path_type=Path), default=None,
    help="State of the embedded mode (default .agent-factory, AF_DATA_DIR); same as the global option.",
)  # fmt: skip
@click.option(
    "--agent", "extra_agents", multiple=True, metavar="MODULE:CLASS",
    help="Serve your own agent too (repeatable; adds to AF_AGENTS), e.g. my_pkg.agents:Double.",
)  # fmt: skip
@click.option(
    "--cluster", "cluster", type=int, default=None, metavar="N",
    help="Embedded mode: a JetStream cluster of N nats-servers, streams with N replicas "
    "(default 1: one server; AF_NATS_CLUSTER_SIZE).",
)  # fmt: skip
@click.pass_obj
def up(
    obj: Ctx,
    port: int | None,
    host: str | None,
    workers: int | None,
    data_dir: Path | None,
    extra_agents: tuple[str, ...],
    cluster: int | None,
) -> None:
    """Start the whole system: NATS, PostgreSQL, API, workers.

    Embedded servers are started unless AF_NATS_URL / AF_DATABASE_URL point
    at existing ones. Besides the example agents it serves your own:
    --agent module:Class, AF_AGENTS, or packages that declare the
    agent_factory.agents entry point. Ctrl-C drains in-flight work and
    stops everything; a second Ctrl-C (or SIGTERM) forces it.
    """
    from agents.registry import AgentLoadError, load_registry  # noqa: PLC0415 (start-up time)
    from gateway.up import DataDirInUse, run_up  # noqa: PLC0415 (start-up time)

    _importable_from_here()

    overrides: dict[str, Any] = {"data_dir": data_dir or obj.data_dir}
    for key, value in (("port", port), ("host", host), ("workers", workers), ("nats_cluster_size", cluster)):
        if value is not None:
            overrides[key] = value
    try:
        settings = Settings(**overrides)
    except ValueError as exc:
        raise CliError(f"invalid settings: {exc}") from exc
    if extra_agents:
        settings.agents = ",".join([*filter(None, settings.agents.split(",")), *extra_agents])
    try:
        load_registry(settings.agents)  # a bad agent stops here, before any server starts
    except AgentLoadError as exc:
        raise CliError(str(exc)) from exc
    tune_gc()
    try:
        asyncio.run(run_up(settings))
    except KeyboardInterrupt:
        pass
    except (DataDirInUse, PortInUse) as exc:  # one line that says what to do
        raise CliError(str(exc)) from exc
    except Exception as exc:
        if obj.verbose:
            raise
        raise CliError(f"up failed: {exc}") from exc


@cli.command()
@click.option("--name", default="worker", help="Name in logs and metrics.")
@click.option("--concurrency", type=int, default=16, show_default=True)
@click.option("--agents", default="", help="Comma-separated agent keys to serve (default: all).")
@click.option("--drain-timeout", type=float, default=30.0, show_default=True)
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Run each task in a fresh confined child (docs/sandbox.md) [default: AF_SANDBOX, on].",
)
@click.option("--role", type=click.Choice(["pool", "dedicated"]), default="pool", show_default=True,
              help="pool: shared; dedicated: an agent's own (started by its lifecycle).")  # fmt: skip
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="Where the pool serves /metrics (the gateway on its data dir merges it).")  # fmt: skip
@click.option("--metrics-port", type=int, default=0, show_default=True,
              help="0: a free port, named in <data dir>/worker-metrics/.")  # fmt: skip
@click.option("--package-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Serve the agent of this installed package only (a deploy of an installed version "
                   "starts its dedicated workers with it).")  # fmt: skip
@click.pass_obj
def worker(obj: Ctx, name: str, concurrency: int, agents: str, drain_timeout: float, sandbox: bool | None,
           role: str, metrics_host: str, metrics_port: int, package_dir: Path | None) -> None:  # fmt: skip
    """Run a worker pool (`up` starts these; run more to scale out)."""
    nats_url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not nats_url:
        raise CliError("no NATS URL: set AF_NATS_URL or run `agent-factory up` first")
    keys = [k.strip() for k in agents.split(",") if k.strip()] or None
    tune_gc()
    try:
        metrics_at = (obj.data_dir, metrics_host, metrics_port)
        sandboxed = Settings().sandbox if sandbox is None else sandbox
        asyncio.run(_worker(nats_url, name, concurrency, keys, drain_timeout, metrics_at, role, sandboxed,
                            package_dir.resolve() if package_dir else None))  # fmt: skip
    except Exception as exc:
        if obj.verbose:
            raise
        raise CliError(f"{name}: {exc}") from exc


async def _worker(nats_url: str, name: str, concurrency: int, keys: list[str] | None, drain: float,
                  metrics_at: tuple[Path, str, int], role: str = "pool",
                  sandboxed: bool = False, package_dir: Path | None = None) -> None:  # fmt: skip
    from agents.registry import load_package, load_registry  # noqa: PLC0415 (start-up time)
    from agents.runtime import worker_for  # noqa: PLC0415 (start-up time)
    from gateway.telemetry import configure_logging, log_stream, tracing  # noqa: PLC0415 (start-up time)
    from gateway.worker_metrics import serve_worker_metrics  # noqa: PLC0415 (start-up time)
    from mesh.queue import metrics  # noqa: PLC0415 (start-up time)
    from mesh.wire.connection import connect, jetstream  # noqa: PLC0415 (start-up time)

    settings = Settings()
    configure_logging(settings, name)
    metrics.cap_tenant_labels(settings.metrics_tenant_cap)
    if package_dir is not None:  # its code alone, from its directory: never the cwd's or AF_AGENTS'
        registry = load_package(package_dir)
        code_at = str(package_dir)
    else:
        _importable_from_here()
        registry = load_registry(os.environ.get("AF_AGENTS", ""))  # what `up` serves, passed down
        code_at = os.getcwd()
    nc = await connect(nats_url, name=name)
    js = await jetstream(nc)
    sandbox = None
    if sandboxed:
        from agents.sandbox import Sandbox  # noqa: PLC0415 (start-up time)
        from agents.sandboxed import sandbox_config  # noqa: PLC0415 (start-up time)

        served = [registry.get(key) for key in keys or registry.keys()]
        sandbox = Sandbox(sandbox_config(served, sys_path=[code_at]))
    pool = worker_for(nc, js, registry, keys, concurrency=concurrency, name=name, role=role, sandbox=sandbox)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    data_dir, host, port = metrics_at
    with tracing(settings, name):
        async with log_stream(nc, name, settings), serve_worker_metrics(data_dir, name, host, port):
            await pool.start()
            await stop.wait()
            await pool.stop(drain_timeout=drain)
    await nc.drain()


def _importable_from_here() -> None:
    """Modules in the current directory import, as with ``python -m``: ``up --agent
    my_agent.agent:MyAgent`` run in a package's directory serves it (its workers,
    started in the same directory, do the same)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)


class _OneInput(click.Command):
    """``run`` takes its input from exactly one of --input and --input-file, checked when
    its arguments are parsed (so a README line without either does not fit the CLI)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        given = (ctx.params.get("input_json") is None, ctx.params.get("input_file") is None)
        if not ctx.resilient_parsing and given[0] == given[1]:
            raise click.UsageError("give the input with one of --input JSON or --input-file FILE", ctx)
        return rest


@cli.command(cls=_OneInput)
@click.argument("agent")
@click.option("--input", "input_json", help="The agent's input as JSON.")
@click.option(
    "--input-file", type=click.File("r"), help="The agent's input: a JSON file ('-': standard input)."
)
@click.option("--priority", default="NORMAL", show_default=True,
              type=click.Choice(["CRITICAL", "HIGH", "NORMAL", "LOW", "BACKGROUND"],
                                case_sensitive=False))  # fmt: skip
@click.option("--idempotency-key", help="Retries with the same key yield one run.")
@click.option(
    "--tenant", help="Whose run it is [default: the token's tenant; for a token of every tenant, 'default']."
)
@click.option("--wait/--no-wait", default=False, help="Wait for the result.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="For --wait.")
@output_option
@click.pass_obj
def run(obj: Ctx, agent: str, input_json: str | None, input_file: TextIO | None, priority: str,
        idempotency_key: str | None, tenant: str | None, wait: bool, timeout: float,
        output: str) -> None:  # fmt: skip
    """Run AGENT once with --input (or --input-file), e.g.

    \b
    agent-factory run fuel-combustion --wait \\
        --input '{"fuel": "diesel", "quantity": 100, "unit": "L"}'
    agent-factory run grid-check --input-file examples/input.json --wait
    """
    if input_json is not None:
        text, said = input_json, "--input"
    else:
        assert input_file is not None
        text, said = input_file.read(), "--input-file"
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{said} is not valid JSON: {exc}") from exc
    body: dict[str, Any] = {"input": payload, "priority": priority.upper()}
    if tenant is not None:  # else the API's: the token's own tenant, or "default"
        body["tenant"] = tenant
    if idempotency_key:
        body["idempotency_key"] = idempotency_key

    async def go() -> dict[str, Any]:
        async with obj.client() as api:
            accepted = await api.submit(agent, body, wait=wait)
            if not wait:
                return accepted
            last = {"status": ""}

            def progress(view: dict[str, Any]) -> None:
                if output != "json" and view["status"] != last["status"]:
                    last["status"] = view["status"]
                    click.echo(f"… {view['status']}", err=True)

            return await api.wait(accepted["run_id"], timeout, progress)

    view = _run(go())
    rows = [("run_id", view["run_id"]), ("agent", view["agent"]), ("status", view["status"])]
    if wait:
        if view.get("error"):
            rows.append(("error", view["error"]))
        result = view.get("result") or {}
        for key, value in result.items() if isinstance(result, dict) else []:
            rows.append((key, value))
    _emit(output, view, rows)
    if wait and view["status"] != "succeeded":
        sys.exit(1)


@cli.command()
@click.argument("run_id")
@output_option
@click.pass_obj
def get(obj: Ctx, run_id: str, output: str) -> None:
    """Show one run: status, input, priority, progress, result, which worker ran it,
    its first and last start, and every attempt's error across DLQ replays."""

    async def go() -> dict[str, Any]:
        async with obj.client() as api:
            return await api.run(run_id)

    view = _run(go())
    rows = [(k, v) for k, v in view.items() if v not in (None, []) and k != "errors"]
    for e in view.get("errors") or []:  # one line each: which round, which attempt, what
        where = f"attempt {e['attempt']}" + (f" (replay {e['replay']})" if e.get("replay") else "")
        rows.append((where, f"{e['error_type']}: {e['error']}"))
    _emit(output, view, rows)


@cli.command()
@output_option
@click.pass_obj
def status(obj: Ctx, output: str) -> None:
    """List agents and their state."""

    data = _run(_call(obj, "GET", "/api/v1/agents"))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'AGENT':<24}{'VERSION':<10}{'STATE':<12}DESCRIPTION")
    for a in data["agents"]:
        click.echo(f"{a['key']:<24}{a['version']:<10}{a['state']:<12}{a['description']}")
    sandbox = data.get("sandbox")
    if sandbox:
        click.echo("sandbox: " + _sandbox_line(sandbox))


def _sandbox_line(sandbox: dict[str, Any]) -> str:
    """``on: rlimits, cgroup v1 (memory, pids), network namespace, uid drop``."""
    if not sandbox["enabled"]:
        return "off (AF_SANDBOX=false): agents run in the worker's own process"
    levels = sandbox["levels"]
    parts = ["rlimits"]
    if levels.get("cgroup"):
        parts.append(f"cgroup {levels['cgroup']} ({', '.join(levels.get('cgroup_controllers', []))})")
    parts += [
        name.replace("_", " ")
        for name in ("network_namespace", "pid_namespace", "uid_drop")
        if levels.get(name)
    ]
    return "on: " + ", ".join(parts)


# benchmarks.suites.SUITES's names (not imported here: it loads the whole platform).
BENCH_SUITES = (
    "skeleton", "queue", "messaging", "streams", "fsync", "scaling", "sandbox", "processors", "api", "config",
    "hub",
)  # fmt: skip


def _worker_counts(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(word) for word in value.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of worker counts such as 1,2,4")
    return counts


@cli.command()
@click.argument("suite", default="all", type=click.Choice([*BENCH_SUITES, "all"]))
@click.option("-n", "count", type=int, default=None, help="Runs/tasks/events to push through.")
@click.option(
    "--cluster", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
    help="queue, fsync, scaling: run on a JetStream cluster of N local nats-servers, every stream "
         "(the raw ceiling's too) with N replicas, clients given every node's URL.",
)  # fmt: skip
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rounds per side of each throughput comparison (the best is compared).")  # fmt: skip
@click.option("--workers", default="1,2,4", show_default=True, callback=_worker_counts,
              help="scaling: the worker process counts to compare, comma-separated.")  # fmt: skip
@click.option(
    "--sandbox",
    "sandboxed",
    is_flag=True,
    help="queue: each of our tasks runs the noop agent in a confined child (docs/sandbox.md).",
)
@click.option("--quota", type=click.IntRange(min=1, max=10_000), default=None,
              help="queue: our agent under a fleet-wide concurrency quota of N (its slots claimed "
                   "and given back per task, docs/processors.md).")  # fmt: skip
@click.option("--trace-ratio", type=click.FloatRange(0.0, 1.0), default=None, metavar="R",
              help="queue: trace as production does, sampling R of the traces (0.1: 10 %), exported "
                   "over OTLP/HTTP to a collector stub (docs/observability.md).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True,
              help="JSON on stdout: what bench prints in any case (progress goes to stderr).")  # fmt: skip
def bench(suite: str, count: int | None, cluster: int, rounds: int, workers: tuple[int, ...],
          sandboxed: bool, quota: int | None, trace_ratio: float | None, as_json: bool) -> None:  # fmt: skip
    """Benchmarks with the raw nats-py ceiling measured in the same run; prints JSON.

    \b
    queue     no-op tasks/s against raw nats-py (one process, then producer and
              worker apart), p50/p99 enqueue-to-start at 1,000 tasks/s
    fsync     the one-process queue bench with sync_interval default, then
              always, each on servers of its own: the cost of fsync per write
    scaling   tasks/s drained by 1, 2, 4 worker processes (--workers), against
              as many raw nats-py consumers; and one producer's enqueues/s
    sandbox   no-op invocations/s through the process sandbox, p50/p99 overhead
              against the same agent called in-process, template RSS, levels
    processors  events/s each stream processor (metering, breaker, canary)
              sustains on one worker, against the raw pull-and-ack ceiling
    api       read endpoints under 200 concurrent clients (a load generator
              process): p50/p99 paced at 1,000 requests/s, and the most it answers
    config    a config change's put-to-applied latency in 3 worker processes
              (p50/p99), against the raw KV message's arrival
    hub       publish, download and install of 1 MB and 20 MB packages (MB/s) against
              the raw object store put and chunk pull; search p99 over 1,000
              indexed versions
    skeleton, messaging, streams: see the README
    all       the suites `make bench` holds to targets (skeleton to streams)

    \b
    agent-factory bench queue --cluster 3 --json
    agent-factory bench queue --quota 256
    agent-factory bench queue --trace-ratio 0.1 --json
    agent-factory bench fsync --cluster 3
    agent-factory bench scaling --cluster 3 --workers 1,2,4
    agent-factory bench config --json
    agent-factory bench hub --json
    """
    from benchmarks.suites import CLUSTER_SUITES, BenchOptions, run_benchmarks  # noqa: PLC0415 (start-up time)

    if cluster > 1 and suite not in CLUSTER_SUITES:
        raise click.UsageError(
            f"--cluster applies to {', '.join(CLUSTER_SUITES)}; {suite} runs on one server"
        )
    del as_json  # JSON is bench's only output; the flag lets a script say so
    tune_gc()  # as in `up` and `worker`; the raw nats-py ceiling runs under the same settings
    for flag, given in (
        ("--sandbox", sandboxed),
        ("--quota", quota),
        ("--trace-ratio", trace_ratio is not None),
    ):
        if given and suite != "queue":
            raise click.UsageError(f"{flag} applies to the queue suite")
    options = BenchOptions(
        count, cluster, rounds, workers, sandbox=sandboxed, quota=quota, trace_ratio=trace_ratio
    )
    result = asyncio.run(run_benchmarks(suite, options))
    click.echo(json.dumps(result, indent=2))


def main() -> None:
    verbose = any(arg in ("-v", "-vv", "-vvv", "--verbose") for arg in sys.argv)
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if verbose:
            raise
        click.echo(f"Error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(1)


# Command groups live in gateway/commands/ (helpers in commands/common.py).
for _group in (
    agent,
    breakers,
    canary,
    channels,
    queue,
    runs,
    cancel,
    schedule,
    processors,
    costs,
    budget,
    quota,
    token,
    tenant,
    ops,
    config,
    logs,
):
    cli.add_command(_group)


if __name__ == "__main__":
    main()

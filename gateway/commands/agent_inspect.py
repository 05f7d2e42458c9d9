"""``agent-factory agent inspect KEY``: what an agent is and how it is protected.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module); reads ``GET /api/v1/agents/{key}``. With ``--deps``, the dependency
graph of a hub package or a local pack instead (:mod:`gateway.commands.agent_deps`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote

import click

from gateway.client import ApiError
from gateway.commands.agent import agent
from gateway.commands.agent_deps import GRAPH_FORMATS, show_dependencies
from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option

__all__ = ["inspect"]


@agent.command("inspect")
@click.argument("key", metavar="KEY | NAME[@VERSION] | DIR")
@click.option("--deps", is_flag=True, help="The dependency graph, resolved against the hub, instead.")
@click.option("--format", "fmt", type=GRAPH_FORMATS, default=None,
              help="The graph's format with --deps [default: text; json with -o json].")  # fmt: skip
@output_option
@click.pass_obj
def inspect(obj: Ctx, key: str, deps: bool, fmt: str | None, output: str) -> None:
    """KEY's description, version, schemas and resilience block (retry, timeout,
    bulkhead, fallback, breaker) with the queue settings it becomes; its versions
    and what its workers hold, where installed versions came from, its config and
    its queue lanes (each when the token may read it).

    \b
    With --deps: the dependencies of hub package NAME (at VERSION, or its highest
    version that is not yanked), or of the pack in directory DIR (it holds
    agent.pack.yaml), resolved against the hub: each version picked, the order
    to install them in, and the groups that may go in parallel.
      agent-factory agent inspect scope2-electricity@1.4.0 --deps
      agent-factory agent inspect ./scope2 --deps --format dot | dot -Tsvg > deps.svg
    """
    if deps:
        show_dependencies(obj, key, fmt, output)
        return
    if fmt is not None:
        raise CliError("--format is the dependency graph's: add --deps")
    data = _run(_inspected(obj, quote(key, safe="")))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{data['key']} {data['version']} ({data['state']})")
    if data["description"]:
        click.echo(f"  {data['description']}")
    click.echo(f"input     {_fields(data['input_schema'])}")
    click.echo(f"output    {_fields(data['output_schema'])}")
    click.echo("resilience")
    for name, line in resilience_lines(data["resilience"]):
        click.echo(f"  {name:<10}{line}")
    for title, lines in _sections(data):
        click.echo(title)
        for line in lines:
            click.echo(f"  {line}")


async def _inspected(obj: Ctx, key: str) -> dict[str, Any]:
    """The agent, and beside it what other routes say of it (each ``None`` when that
    route is not this token's to read, or fails): its versions and what workers hold
    (``health``), its config (``config``), its lanes (``queue``), where its installed
    versions came from (``installed``)."""
    detail: dict[str, Any] = await _call(obj, "GET", f"/api/v1/agents/{key}")
    paths = {"health": f"/api/v1/agents/{key}/health", "config": f"/api/v1/config/{key}",
             "queue": "/api/v1/queue/stats", "installed": f"/api/v1/hub/installs?agent={key}"}  # fmt: skip
    answers = await asyncio.gather(*(_call(obj, "GET", p) for p in paths.values()), return_exceptions=True)
    for name, answer in zip(paths, answers, strict=True):
        if isinstance(answer, BaseException) and not isinstance(answer, CliError | ApiError):
            raise answer
        detail[name] = None if isinstance(answer, BaseException) else answer
    if detail["queue"] is not None:
        detail["queue"] = [lane for lane in detail["queue"]["lanes"] if lane["agent"] == detail["key"]]
    if detail["installed"] is not None:
        detail["installed"] = detail["installed"]["installed"]
    return detail


def _sections(data: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The other routes' answers in words (a section a token may not read is left out)."""
    shown: list[tuple[str, list[str]]] = []
    if data["health"] is not None:
        versions = [f"{v['version']:<12}{v['state']:<14}{v['mode']}" for v in data["health"]["versions"]]
        workers = [f"worker {w['worker']} ({w['role']}): {w['running']} running, {w['held']} waiting"
                   for w in data["health"]["workers"]]  # fmt: skip
        shown.append((f"versions (gate {data['health']['gate']})", versions or ["no lifecycle record"]))
        shown.append(("workers", workers or ["none answered"]))
    if data["installed"]:
        rows = data["installed"]
        shown.append(
            (
                "installed from the hub",
                [f"{r['version']:<12}sha256 {r['digest'][:12]}…  {r['installed_at'][:19]}" for r in rows],
            )
        )
    if data["config"] is not None:
        current = data["config"]["current"]
        said = f"version {current['version']}" if current else "none stored (defaults)"
        shown.append((f"config ({said})", [json.dumps(data["config"]["merged"], sort_keys=True)]))
    if data["queue"] is not None:
        shown.append(("queue", [
            f"priority {lane['priority']}: {lane['waiting']} waiting, {lane['in_flight']} in flight"
            f"{' (stalled)' if lane['stalled'] else ''}, gate {lane['gate']}" for lane in data["queue"]
        ] or ["no lanes yet"]))  # fmt: skip
    return shown


def _fields(schema: dict[str, Any]) -> str:
    """``{name: type, …}`` of a JSON schema's properties, required ones marked ``*``."""
    required = set(schema.get("required", []))
    shown = []
    for name, prop in schema.get("properties", {}).items():
        kind = prop.get("type") or prop.get("$ref", "any").split("/")[-1]
        shown.append(f"{name}{'*' if name in required else ''}: {kind}")
    return "{" + ", ".join(shown) + "}"


def resilience_lines(res: dict[str, Any]) -> list[tuple[str, str]]:
    """The block in words, one line per policy."""
    block, queue = res["block"], res["queue"]
    retry = block["retry"]
    timeout = block["timeout_s"]
    backoff = f"{queue['backoff_base_s']:g}-{queue['backoff_max_s']:g} s (jitter {queue['jitter']:g})"
    lines = [
        ("retry", (
            f"{queue['max_attempts']} attempts, backoff {backoff}, on: {', '.join(retry['on'])}; "
            "the queue retries (delayed nak)"
        )),
        ("timeout", f"{timeout:g} s per attempt, then cancelled" if timeout else "none"),
        ("bulkhead", (
            f"{queue['concurrency']} at once per worker; the rest wait in the queue"
            if queue["concurrency"] else "none (the worker's concurrency)"
        )),
    ]  # fmt: skip
    fallback = block["fallback"]
    if fallback:
        hops = [*fallback["agents"]]
        if fallback["default"] is not None:
            hops.append("default " + json.dumps(fallback["default"]))
        lines.append(("fallback", " -> ".join(hops)))
    else:
        lines.append(("fallback", "none"))
    breaker = block["breaker"]
    lines.append(("breaker", (
        f"opens at {breaker['failure_rate']:.0%} failures of >= {breaker['min_calls']} calls in "
        f"{breaker['window_s']:g} s, open {breaker['open_s']:g} s, {breaker['half_open_calls']} probes"
        if breaker else "none"
    )))  # fmt: skip
    if res["problem"]:
        lines.append(("problem", res["problem"]))
    return lines

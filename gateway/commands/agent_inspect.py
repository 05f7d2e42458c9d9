"""``agent-factory agent inspect KEY``: what an agent is and how it is protected.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module); reads ``GET /api/v1/agents/{key}``. With ``--deps``, the dependency
graph of a hub package or a local pack instead (:mod:`gateway.commands.agent_deps`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import click

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
    bulkhead, fallback, breaker) with the queue settings it becomes.

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
    data = _run(_call(obj, "GET", f"/api/v1/agents/{quote(key, safe='')}"))
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

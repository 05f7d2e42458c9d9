"""``agent-factory agent inspect --deps`` and ``agent compat``: dependencies against the hub.

``inspect --deps`` shows the graph a package version (``NAME[@VERSION]``, from
the hub) or a pack directory on this machine resolves to against the hub's
index, as text, JSON or Graphviz DOT; ``compat`` shows a package's
compatibility matrix. The resolution is the gateway's (docs/hub.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from agents.packaging.errors import PackagingError
from agents.packaging.graph import DependencyGraph
from agents.packaging.spec import SPEC_FILE, load_spec
from gateway.commands.agent import agent
from gateway.commands.agent_hub import _newest
from gateway.commands.common import CliError, Ctx, _emit, _run, output_option

__all__ = ["compat", "show_dependencies"]

GRAPH_FORMATS = click.Choice(["text", "json", "dot"])


def show_dependencies(obj: Ctx, target: str, fmt: str | None, output: str) -> None:
    """Print the resolved graph of ``target``: a pack directory (it holds agent.pack.yaml)
    or ``NAME[@VERSION]`` in the hub (the highest version that is not yanked without one)."""
    graph = _run(_resolved(obj, target))
    chosen = fmt or ("json" if output == "json" else "text")
    if chosen == "json":
        _emit("json", graph)
    elif chosen == "dot":
        click.echo(_as_graph(graph).to_dot(), nl=False)
    else:
        _print_graph(graph)


async def _resolved(obj: Ctx, target: str) -> dict[str, Any]:
    directory = Path(target)
    if (directory / SPEC_FILE).is_file():
        try:
            spec = load_spec(directory)
        except PackagingError as exc:
            raise CliError(str(exc)) from None
        body = {"name": spec.name, "version": spec.version, "dependencies": dict(spec.dependencies)}
        async with obj.client() as api:
            local: dict[str, Any] = await api.request("POST", "/api/v1/hub/resolve", body)
            return local
    name, _, version = target.partition("@")
    async with obj.client() as api:
        chosen = version or await _newest(api, name)
        found: dict[str, Any] = await api.request(
            "GET", f"/api/v1/hub/packages/{quote(name, safe='')}/{quote(chosen, safe='')}/graph"
        )
        return found


def _as_graph(shown: dict[str, Any]) -> DependencyGraph:
    edges: dict[str, list[str]] = {node["name"]: [] for node in shown["nodes"]}
    for edge in shown["edges"]:
        edges[edge["from"]].append(edge["to"])
    return DependencyGraph.of(edges, {n["name"]: n["version"] for n in shown["nodes"] if n["version"]})


def _print_graph(shown: dict[str, Any]) -> None:
    versions = {node["name"]: node["version"] for node in shown["nodes"]}
    click.echo(f"{shown['package']} {shown['version']}: {len(shown['nodes']) - 1} dependencies")
    for name in reversed(shown["order"]):  # the package first, then what it needs
        needs = [e for e in shown["edges"] if e["from"] == name]
        if needs:
            click.echo(f"  {name} {versions[name]}")
            for edge in needs:
                click.echo(f"    -> {edge['to']} {edge['range']}  ({versions[edge['to']]})")
    click.echo("order   " + ", ".join(shown["order"]))
    for i, level in enumerate(shown["levels"]):
        click.echo(f"level {i} " + ", ".join(f"{n} {versions[n]}" for n in level))


@agent.command("compat")
@click.argument("name")
@output_option
@click.pass_obj
def compat(obj: Ctx, name: str, output: str) -> None:
    """Package NAME's compatibility matrix: for each version in the hub, whether it runs
    on this platform (its `platform` range), which versions of each dependency satisfy
    its ranges, and whether its dependencies resolve.

    \b
    agent-factory agent compat scope2-electricity
    agent-factory agent compat scope2-electricity -o json
    """

    async def fetch() -> dict[str, Any]:
        async with obj.client() as api:
            path = f"/api/v1/hub/packages/{quote(name, safe='')}/compat"
            found: dict[str, Any] = await api.request("GET", path)
            return found

    matrix = _run(fetch())
    if output == "json":
        _emit(output, matrix)
        return
    click.echo(f"{matrix['package']} on Agent Factory {matrix['platform']}")
    click.echo(f"  {'VERSION':<16}{'OK':<5}{'PLATFORM':<20}DEPENDENCIES")
    for row in matrix["versions"]:
        ok = "yes" if row["compatible"] else "no"
        platform = (row["platform"] or "any") + ("" if row["platform_compatible"] else " (no)")
        deps = "; ".join(
            f"{dep} {fit['range']}: {', '.join(fit['satisfied_by'][:5]) or 'none'}"
            for dep, fit in row["dependencies"].items()
        )
        version = row["version"] + (" (yanked)" if row["yanked"] else "")
        click.echo(f"  {version:<16}{ok:<5}{platform:<20}{deps or '-'}")
        if row["problem"]:
            click.echo("      " + row["problem"].replace("\n", "\n      "))

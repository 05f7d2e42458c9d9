"""``agent-factory agent install | installed``: hub packages installed into the
running platform (docs/hub.md, "Installing").

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module). Install follows the ``hub.install`` operation: the package is
downloaded from the hub, checked in full, extracted into the data dir and its
version registered; with ``--deploy`` it is deployed too, on dedicated workers
of its own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import click

from gateway.commands.agent import agent
from gateway.commands.common import Ctx, _call, _emit, _run, output_option
from gateway.commands.ops import failed, start

__all__ = ["install", "installed"]


@agent.command("install")
@click.argument("package", metavar="NAME[@VERSION]")
@click.option("--tenant", help="Install this tenant's own package of that name [default: the public one].")
@click.option("--deploy", is_flag=True, help="Then deploy it: dedicated workers of its own start.")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait for it.")
@output_option
@click.pass_obj
def install(obj: Ctx, package: str, tenant: str | None, deploy: bool, timeout: float, output: str) -> None:
    """Install a package from the hub into the platform: NAME's highest version that is
    not yanked, or NAME@VERSION.

    \b
    Its archive is checked again in full (signature as the trust policy asks,
    every checksum, no hostile member), extracted into the data dir, and its
    version registered (CREATED). `agent deploy NAME --version V` then runs it
    on workers of its own, started in its directory; --deploy does both.

    \b
    agent-factory agent install scope2-electricity@1.4.0 --deploy
    agent-factory agent install scope2-electricity --tenant acme -o json
    """
    name, _, version = package.partition("@")
    body: dict[str, Any] = {"name": name, "deploy": deploy}
    if version:
        body["version"] = version
    if tenant:
        body["tenant"] = tenant
    op = start(obj, "/api/v1/hub/installs", body, timeout, show=output != "json")
    if output == "json":
        _emit(output, op)
        if op["status"] != "succeeded":
            raise click.exceptions.Exit(1)
        return
    if op["status"] != "succeeded":
        raise failed(op)
    row = op["result"]["installed"]
    for dep in op["result"]["dependencies"]:
        click.echo(f"installed dependency {dep['agent']} {dep['version']} (sha256 {dep['digest'][:12]}…)")
    click.echo(f"installed {row['agent']} {row['version']} (sha256 {row['digest'][:12]}…)")
    deployed = op["result"].get("deploy")
    for out in deployed or []:
        click.echo(f"{out['agent']} {out['version']}: {out['state']} — {out['detail']}")
    if not deployed:
        click.echo(f"deploy it with: agent-factory agent deploy {row['agent']} --version {row['version']}")


@agent.command("installed")
@click.argument("name", required=False)
@output_option
@click.pass_obj
def installed(obj: Ctx, name: str | None, output: str) -> None:
    """The agent versions installed from the hub (of NAME only, if given)."""
    query = f"?{urlencode({'agent': name})}" if name else ""
    found = _run(_call(obj, "GET", f"/api/v1/hub/installs{query}"))["installed"]
    if output == "json":
        _emit(output, found)
        return
    if not found:
        click.echo("nothing is installed from the hub")
    for r in found:
        source = "public" if r["hub_tenant"] is None else f"tenant {r['hub_tenant']}"
        at = r["installed_at"][:19]
        click.echo(f"{r['agent']:<28}{r['version']:<14}{r['digest'][:12]}  {at}  {source}")

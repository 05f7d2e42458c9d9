"""``agent-factory runs ls`` and ``agent-factory cancel``: find runs and stop them."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import click

from gateway.commands.common import Ctx, _emit, _run, output_option

__all__ = ["cancel", "runs"]

STATUSES = ("queued", "running", "succeeded", "failed", "expired", "cancelled")


@click.group()
def runs() -> None:
    """Find runs: newest first, filtered by agent, tenant, status and time."""


@runs.command("ls")
@click.option("--agent", help="Only this agent's runs.")
@click.option("--tenant", help="Only this tenant's runs.")
@click.option(
    "--status", "statuses", multiple=True, type=click.Choice(STATUSES),
    help="Only runs in this status (repeatable).",
)  # fmt: skip
@click.option("--since", help="Only runs enqueued at or after this ISO 8601 time, e.g. 2026-12-03T08:00Z.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Runs per page.")
@click.option("--cursor", help="Continue from where the previous page ended (printed below it).")
@click.option("--all", "every_page", is_flag=True, help="Follow the cursor through every page.")
@output_option
@click.pass_obj
def runs_ls(
    obj: Ctx,
    agent: str | None,
    tenant: str | None,
    statuses: tuple[str, ...],
    since: str | None,
    limit: int,
    cursor: str | None,
    every_page: bool,
    output: str,
) -> None:
    """List runs, newest first. The list comes from PostgreSQL's run index and may
    lag the live state by a moment; `agent-factory get RUN_ID` shows the live one."""
    query: dict[str, Any] = {"limit": limit}
    for key, value in (("agent", agent), ("tenant", tenant), ("since", since), ("cursor", cursor)):
        if value:
            query[key] = value
    if statuses:
        query["status"] = ",".join(statuses)

    async def go() -> dict[str, Any]:
        found: list[dict[str, Any]] = []
        async with obj.client() as api:
            while True:
                page = await api.request("GET", "/api/v1/runs?" + urlencode(query))
                found += page["runs"]
                if not (every_page and page["next_cursor"]):
                    return {"runs": found, "next_cursor": page["next_cursor"]}
                query["cursor"] = page["next_cursor"]

    data = _run(go())
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'RUN':<34}{'AGENT':<24}{'TENANT':<12}{'STATUS':<11}{'TRIES':<6}ENQUEUED")
    for r in data["runs"]:
        click.echo(
            f"{r['run_id']:<34}{r['agent']:<24}{r['tenant']:<12}{r['status']:<11}"
            f"{r['attempts']:<6}{str(r['enqueued_at'])[:19]}"
        )
    if not data["runs"]:
        click.echo("no runs match", err=True)
    if data["next_cursor"]:
        click.echo(f"more: agent-factory runs ls --cursor {data['next_cursor']} (or --all)", err=True)


@click.command()
@click.argument("run_id")
@output_option
@click.pass_obj
def cancel(obj: Ctx, run_id: str, output: str) -> None:
    """Cancel a queued or running run. A queued run never starts; a running one is
    stopped at its next await and its result, if any, is not recorded. A run that
    already finished is left as it is (exit code 1)."""

    async def go() -> dict[str, Any]:
        async with obj.client() as api:
            result: dict[str, Any] = await api.request("DELETE", f"/api/v1/runs/{run_id}")
            return result

    view = _run(go())
    _emit(output, view, [("run_id", view["run_id"]), ("agent", view["agent"]), ("status", view["status"])])

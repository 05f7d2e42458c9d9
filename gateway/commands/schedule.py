"""``agent-factory schedule``: cron schedules and event triggers, through the API.

\b
agent-factory schedule add nightly --cron "0 2 * * *" --agent fuel-combustion \\
    --input '{"fuel": "diesel", "quantity": 100, "unit": "L"}'
agent-factory schedule add-trigger after-fuel \\
    --on "af.events.execution.finished.fuel-combustion.*" --agent noop
agent-factory schedule ls
agent-factory schedule rm nightly
"""

from __future__ import annotations

import json
from typing import Any

import click

from gateway.commands.common import CliError, Ctx, _emit, _run, output_option

__all__ = ["schedule"]

BASE = "/api/v1/queue/schedules"
PRIORITIES = click.Choice(["CRITICAL", "HIGH", "NORMAL", "LOW", "BACKGROUND"], case_sensitive=False)


def _input(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--input is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CliError("--input must be a JSON object")
    return value


def _common(func: Any) -> Any:
    for option in reversed([
        click.option("--agent", required=True, help="The agent to run."),
        click.option("--input", "input_json", default="{}", show_default=True,
                     help="The agent's input as a JSON object."),
        click.option("--priority", default="NORMAL", show_default=True, type=PRIORITIES),
        click.option("--tenant", default="default", show_default=True),
        click.option("--replace", is_flag=True, help="Replace a definition of that name."),
        output_option,
    ]):  # fmt: skip
        func = option(func)
    return func


def _save(obj: Ctx, body: dict[str, Any], replace: bool, output: str) -> None:
    async def go() -> dict[str, Any]:
        async with obj.client() as api:
            if replace:
                result = await api.request("PUT", f"{BASE}/{body['name']}", body)
            else:
                result = await api.request("POST", BASE, body)
            assert isinstance(result, dict)
            return result

    view = _run(go())
    _emit(output, view, [(k, v) for k, v in view.items() if v not in (None, {}, [])])


@click.group()
def schedule() -> None:
    """Cron schedules and event triggers that enqueue tasks."""


@schedule.command()
@click.argument("name")
@click.option(
    "--cron",
    "cron",
    required=True,
    help='"*/5 * * * *", 6 fields with seconds first, "@every 10m" or "@daily".',
)
@click.option("--timezone", help="IANA time zone for the cron fields (default UTC).")
@_common
@click.pass_obj
def add(obj: Ctx, name: str, cron: str, timezone: str | None, agent: str, input_json: str,
        priority: str, tenant: str, replace: bool, output: str) -> None:  # fmt: skip
    """Run AGENT with INPUT at every tick of --cron."""
    body: dict[str, Any] = {"kind": "cron", "name": name, "cron": cron, "agent": agent,
                            "input": _input(input_json), "priority": priority.upper(),
                            "tenant": tenant}  # fmt: skip
    if timezone:
        body["timezone"] = timezone
    _save(obj, body, replace, output)


@schedule.command("add-trigger")
@click.argument("name")
@click.option(
    "--on",
    "on",
    required=True,
    help="Subject pattern on AF_EVENTS, e.g. af.events.execution.finished.fuel-combustion.*",
)
@click.option("--event-field", default="event", show_default=True, help="Input key that receives the event.")
@click.option("--no-event", is_flag=True, help="Do not pass the event into the input.")
@_common
@click.pass_obj
def add_trigger(obj: Ctx, name: str, on: str, event_field: str, no_event: bool, agent: str,
                input_json: str, priority: str, tenant: str, replace: bool,
                output: str) -> None:  # fmt: skip
    """Run AGENT once for every event matching --on."""
    body: dict[str, Any] = {"kind": "trigger", "name": name, "on": on, "agent": agent,
                            "input": _input(input_json), "priority": priority.upper(),
                            "tenant": tenant, "event_field": None if no_event else event_field}  # fmt: skip
    _save(obj, body, replace, output)


@schedule.command("ls")
@click.option("--kind", type=click.Choice(["cron", "trigger"]), help="Only this kind.")
@output_option
@click.pass_obj
def ls(obj: Ctx, kind: str | None, output: str) -> None:
    """List schedules and triggers."""

    async def go() -> dict[str, Any]:
        async with obj.client() as api:
            result = await api.request("GET", BASE + (f"?kind={kind}" if kind else ""))
            assert isinstance(result, dict)
            return result

    data = _run(go())
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'NAME':<24}{'KIND':<9}{'AGENT':<24}{'WHEN':<36}NEXT")
    for s in data["schedules"]:
        when = s.get("cron") or f"on {s.get('on')}"
        if s.get("timezone"):
            when += f" ({s['timezone']})"
        click.echo(f"{s['name']:<24}{s['kind']:<9}{s['agent']:<24}{when:<36}"
                   f"{s.get('next_fire') or '-'}")  # fmt: skip


@schedule.command("rm")
@click.argument("name")
@output_option
@click.pass_obj
def rm(obj: Ctx, name: str, output: str) -> None:
    """Remove schedule or trigger NAME."""

    async def go() -> None:
        async with obj.client() as api:
            await api.request("DELETE", f"{BASE}/{name}")

    _run(go())
    if output == "json":
        _emit(output, {"removed": name})
        return
    click.echo(f"removed {name}")

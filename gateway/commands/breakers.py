"""``agent-factory breakers …``: see every agent's circuit breaker, force one open or closed."""

from __future__ import annotations

import getpass
import socket
from typing import Any

import click

from gateway.commands.common import Ctx, _call, _emit, _run, output_option

__all__ = ["breakers"]


@click.group()
def breakers() -> None:
    """Fleet-wide circuit breakers, one per agent and one per agent version.

    \b
    agent-factory breakers ls
    agent-factory breakers open my-agent --reason "bad deploy" --for 600
    agent-factory breakers close my-agent --reason "rolled back"

    The breaker processor opens an agent's breaker when its failure rate or
    slow-call rate over the last minute crosses its threshold: while open, no
    worker takes the agent's tasks (they wait in the queue, no retries burnt)
    and `run --wait` is refused at once (503). While two versions serve (a
    canary), a failing version's own breaker opens: its workers stop, the
    other version's serve. After the open wait it goes
    half-open, lets a few trial tasks run, and closes or opens again from
    their outcomes. `open` and `close` override it; each is audited (who,
    when, why) on af.events.breaker.changed.<agent>.
    """


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _show(output: str, state: dict[str, Any]) -> None:
    keys = ("agent", "version", "state", "since", "open_until", "trials", "reason", "forced_by")
    rows = [(k, state[k]) for k in keys]
    _emit(output, state, [(k, "" if v is None else v) for k, v in rows])


@breakers.command("ls")
@output_option
@click.pass_obj
def ls(obj: Ctx, output: str) -> None:
    """Every breaker that has left closed (agents not listed are closed)."""
    data = _run(_call(obj, "GET", "/api/v1/breakers"))
    if output == "json":
        _emit(output, data)
        return
    if not data["breakers"]:
        click.echo("every breaker is closed")
        return
    click.echo(f"{'AGENT':<24}{'STATE':<11}{'UNTIL':<34}{'BY':<20}REASON")
    for b in data["breakers"]:
        name = b["agent"] + (f"@{b['version']}" if b["version"] else "")
        click.echo(f"{name:<24}{b['state']:<11}{b['open_until'] or '':<34}"
                   f"{b['forced_by'] or 'processor':<20}{b['reason']}")  # fmt: skip


_version = click.option(
    "--version", help="Only this version's breaker (its workers stop; other versions serve)."
)


@breakers.command("open")
@click.argument("agent")
@_version
@click.option("--reason", required=True, help="Why (kept in the audit event).")
@click.option("--for", "open_for_s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds to hold it open, then half-open as usual [default: until `close`].")  # fmt: skip
@output_option
@click.pass_obj
def open_(obj: Ctx, agent: str, version: str | None, reason: str, open_for_s: float | None,
          output: str) -> None:  # fmt: skip
    """Force AGENT's breaker open: no worker takes its tasks until closed (or --for passes)."""
    body: dict[str, Any] = {"action": "open", "reason": reason, "by": _who()}
    if open_for_s is not None:
        body["open_for_s"] = open_for_s
    if version is not None:
        body["version"] = version
    _show(output, _run(_call(obj, "POST", f"/api/v1/breakers/{agent}", body)))


@breakers.command("close")
@click.argument("agent")
@_version
@click.option("--reason", required=True, help="Why (kept in the audit event).")
@output_option
@click.pass_obj
def close(obj: Ctx, agent: str, version: str | None, reason: str, output: str) -> None:
    """Force AGENT's breaker closed: workers take its tasks again, with a fresh window."""
    body: dict[str, Any] = {"action": "close", "reason": reason, "by": _who()}
    if version is not None:
        body["version"] = version
    _show(output, _run(_call(obj, "POST", f"/api/v1/breakers/{agent}", body)))

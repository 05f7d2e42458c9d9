"""``agent-factory canary metrics AGENT``: how each version of an agent is doing."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import click

from gateway.commands.common import Ctx, _call, _emit, _run, output_option
from mesh.canary import WINDOWS

__all__ = ["canary"]


@click.group()
def canary() -> None:
    """Canary metrics: per agent version, what a rollout decides on."""


@canary.command()
@click.argument("agent")
@click.option("--version", "version", default=None, help="Only this version (e.g. 1.2.0) [default: all].")
@click.option(
    "--window", type=click.Choice(list(WINDOWS)), default=None, help="Only this window [default: all]."
)
@output_option
@click.pass_obj
def metrics(obj: Ctx, agent: str, version: str | None, window: str | None, output: str) -> None:
    """Requests, error rate, p50/p95/p99 duration and cost per task of AGENT's versions.

    \b
    agent-factory canary metrics summarize
    agent-factory canary metrics summarize --version 1.3.0-rc.1 --window 5m -o json

    Windows end now and merge the last 1, 5, 15 or 60 minutes of finished runs
    (succeeded or failed; expired and cancelled runs do not count). Percentiles
    are within 1% of the true value of their rank (a DDSketch); cost is CPU ms
    (the duration when a run's CPU time was not measured). A window with fewer
    requests than the processor's minimum sample count shows its counts and
    "insufficient data" instead of rates. The numbers come from the canary
    stream processor (`agent-factory processors --only canary`, started by `up`),
    refreshed about every second.
    """
    query = urlencode({k: v for k, v in (("version", version), ("window", window)) if v})
    path = f"/api/v1/canary/{quote(agent, safe='')}/metrics" + (f"?{query}" if query else "")
    data = _run(_call(obj, "GET", path))
    if output == "json":
        _emit(output, data)
        return
    click.echo(
        f"{'VERSION':<24}{'WINDOW':<8}{'REQUESTS':>9}{'ERRORS':>8}{'ERROR%':>8}"
        f"{'P50 MS':>10}{'P95 MS':>10}{'P99 MS':>10}{'COST/TASK':>11}"
    )
    for found in data["versions"]:
        for name, w in found["windows"].items():
            click.echo(
                f"{found['version']:<24}{name:<8}{w['requests']:>9}{w['errors']:>8}" + _rates(w, found)
            )


def _rates(w: dict[str, Any], found: dict[str, Any]) -> str:
    if w["status"] != "ok":
        return f"  {w['status']} (< {found['min_samples']} requests)"
    cost = "" if w["cost_per_task"] is None else f"{w['cost_per_task']:.1f}"
    percentiles = "".join("" if w[p] is None else f"{w[p]:>10.1f}" for p in ("p50_ms", "p95_ms", "p99_ms"))
    return f"{100 * w['error_rate']:>7.1f}%{percentiles}{cost:>11}"

"""``agent-factory costs``, ``budget`` and ``quota``: what executions cost, and limits on it.

\b
agent-factory costs --group-by tenant --period day
agent-factory budget set acme-monthly --tenant acme --limit 250 --period month --hard
agent-factory budget ls
agent-factory budget rm acme-monthly
agent-factory quota set fuel-daily --agent fuel-combustion --max-daily 10000
agent-factory quota set acme-running --tenant acme --max-concurrent 20
"""

from __future__ import annotations

from typing import Any

import click

from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option
from mesh.queue.budgets import MAX_CONCURRENT

__all__ = ["budget", "costs", "quota"]


@click.command()
@click.option("--group-by", type=click.Choice(["agent", "tenant"]), default="agent", show_default=True)
@click.option("--period", type=click.Choice(["hour", "day", "month"]), default="day", show_default=True)
@click.option("--since", help="ISO time (default: 2 days, 31 days or a year back, by period).")
@click.option("--until", help="ISO time (default: now).")
@click.option("--agent", help="Only this agent's executions.")
@click.option("--tenant", help="Only this tenant's executions.")
@output_option
@click.pass_obj
def costs(obj: Ctx, group_by: str, period: str, since: str | None, until: str | None, agent: str | None,
          tenant: str | None, output: str) -> None:  # fmt: skip
    """What executions cost, per agent or tenant and per period (priced by the
    metering processor, from PostgreSQL's billing records)."""
    query = {"group_by": group_by, "period": period, "since": since, "until": until, "agent": agent,
             "tenant": tenant}  # fmt: skip
    params = "&".join(f"{k}={v}" for k, v in query.items() if v)
    data = _run(_call(obj, "GET", f"/api/v1/costs?{params}"))
    if output == "json":
        _emit(output, data)
        return
    rows = data["rows"]
    if not rows:
        click.echo(f"no priced executions between {data['since']} and {data['until']}")
        return
    click.echo(f"{'PERIOD':<26}{group_by.upper():<24}{'RUNS':>8}  {'COST':>14}  CURRENCY")
    for row in rows:
        click.echo(f"{row['start']:<26}{row[group_by]:<24}{row['executions']:>8}  {row['amount']:>14.9f}  "
                   f"{row['currency']}")  # fmt: skip
    click.echo(f"{'total':<50}{data['executions']:>8}  {data['total']:>14.9f}")


def _put(
    obj: Ctx, path: str, agent: str | None, tenant: str | None, body: dict[str, Any], output: str
) -> None:
    """Create or replace a budget or quota, scoped to ``agent``, ``tenant`` or both."""
    if not (agent or tenant):
        raise CliError("give --agent, --tenant or both")
    scope = {k: v for k, v in (("agent", agent), ("tenant", tenant)) if v}
    data = _run(_call(obj, "PUT", path, {**scope, **body}))
    _emit(output, data, list(data.items()))


def _limit_rows(kind: str, items: list[dict[str, Any]]) -> None:
    if not items:
        click.echo(f"no {kind}s")
        return
    for item in items:
        scope = " ".join(f"{k}={item[k]}" for k in ("agent", "tenant") if item.get(k))
        if kind == "budget":
            what = f"{item['limit']:g} per {item['period']}{' hard' if item['hard'] else ' soft'}"
            what += f" alerts at {','.join(str(p) for p in item['thresholds'])}%"
        else:
            parts = [f"{item['max_daily']} per day"] if item.get("max_daily") else []
            if item.get("max_concurrent"):
                parts.append(f"{item['max_concurrent']} at once ({item.get('running', 0)} running)")
            what = ", ".join(parts)
        spent = item.get("spent")
        state = f"SPENT until {spent['reset_at']} ({spent['used']:g})" if spent else "ok"
        click.echo(f"{item['id']:<24}{scope:<40}{what:<48}{state}")


@click.group()
def budget() -> None:
    """Spend limits per agent, tenant or agent x tenant: alerts at thresholds
    (soft), or refused work once spent (hard: HTTP 402 until the period ends)."""


@budget.command("set")
@click.argument("budget_id")
@click.option("--agent", help="Whose spend: an agent (with --tenant: that agent for that tenant).")
@click.option("--tenant", help="Whose spend: a tenant.")
@click.option("--limit", type=click.FloatRange(min=0, min_open=True), required=True,
              help="In the price table's currency.")  # fmt: skip
@click.option(
    "--period", type=click.Choice(["hour", "day", "week", "month"]), default="month", show_default=True
)
@click.option("--hard", is_flag=True, help="Refuse new work once spent (default: alerts only).")
@click.option("--thresholds", default="80,100", show_default=True, help="Alert at these percentages.")
@output_option
@click.pass_obj
def budget_set(obj: Ctx, budget_id: str, agent: str | None, tenant: str | None, limit: float, period: str,
               hard: bool, thresholds: str, output: str) -> None:  # fmt: skip
    """Create or replace budget BUDGET_ID."""
    try:
        pcts = [int(p) for p in thresholds.split(",") if p.strip()]
    except ValueError as exc:
        raise CliError(f"--thresholds: comma-separated whole percentages, not {thresholds!r}") from exc
    body = {"limit": limit, "period": period, "hard": hard, "thresholds": pcts}
    _put(obj, f"/api/v1/budgets/{budget_id}", agent, tenant, body, output)


@budget.command("ls")
@output_option
@click.pass_obj
def budget_ls(obj: Ctx, output: str) -> None:
    """Every budget, and whether it is spent."""
    data = _run(_call(obj, "GET", "/api/v1/budgets"))
    if output == "json":
        _emit(output, data["budgets"])
    else:
        _limit_rows("budget", data["budgets"])


@budget.command("rm")
@click.argument("budget_id")
@click.pass_obj
def budget_rm(obj: Ctx, budget_id: str) -> None:
    """Remove budget BUDGET_ID (work it refused is accepted again within a second)."""
    _run(_call(obj, "DELETE", f"/api/v1/budgets/{budget_id}"))
    click.echo(f"removed budget {budget_id}")


@click.group()
def quota() -> None:
    """Execution limits per agent, tenant or agent x tenant: at most N per UTC day
    (then HTTP 429 until midnight UTC) and at most N running at once across the
    fleet (the rest wait in the queue)."""


@quota.command("set")
@click.argument("quota_id")
@click.option("--agent", help="Whose executions: an agent (with --tenant: that agent for that tenant).")
@click.option("--tenant", help="Whose executions: a tenant.")
@click.option("--max-daily", type=click.IntRange(min=1), help="Executions per UTC day (then 429).")
@click.option("--max-concurrent", type=click.IntRange(min=1, max=MAX_CONCURRENT),
              help="Executions running at once, fleet-wide (the rest wait in the queue).")  # fmt: skip
@output_option
@click.pass_obj
def quota_set(obj: Ctx, quota_id: str, agent: str | None, tenant: str | None, max_daily: int | None,
              max_concurrent: int | None, output: str) -> None:  # fmt: skip
    """Create or replace quota QUOTA_ID (give --max-daily, --max-concurrent or both)."""
    if max_daily is None and max_concurrent is None:
        raise CliError("give --max-daily, --max-concurrent or both")
    body = {k: v for k, v in (("max_daily", max_daily), ("max_concurrent", max_concurrent)) if v}
    _put(obj, f"/api/v1/quotas/{quota_id}", agent, tenant, body, output)


@quota.command("ls")
@output_option
@click.pass_obj
def quota_ls(obj: Ctx, output: str) -> None:
    """Every quota, and whether it is used up."""
    data = _run(_call(obj, "GET", "/api/v1/budgets"))
    if output == "json":
        _emit(output, data["quotas"])
    else:
        _limit_rows("quota", data["quotas"])


@quota.command("rm")
@click.argument("quota_id")
@click.pass_obj
def quota_rm(obj: Ctx, quota_id: str) -> None:
    """Remove quota QUOTA_ID."""
    _run(_call(obj, "DELETE", f"/api/v1/quotas/{quota_id}"))
    click.echo(f"removed quota {quota_id}")

"""``agent-factory config …``: an agent's configuration and its tenants' overrides (docs/config.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any
from urllib.parse import quote

import click

from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option
from gateway.state import read_state

__all__ = ["config"]


@click.group()
def config() -> None:
    """Agent configuration: versioned, validated, hot-reloaded by every worker.

    \b
    agent-factory config get fuel-combustion
    agent-factory config set fuel-combustion --values '{"region": "EU"}' -m "EU factors"
    agent-factory config set fuel-combustion --tenant acme --max-daily 1000 --disable
    agent-factory config diff fuel-combustion 1 3
    agent-factory config rollback fuel-combustion --to 1
    agent-factory config watch

    Without --tenant a command acts on the agent's own config; with it, on
    that tenant's override, merged on top (values deep-merged, knobs replaced).
    """


def _path(agent: str, tail: str = "", tenant: str | None = None, **query: Any) -> str:
    params = {**({"tenant": tenant} if tenant else {}), **{k: v for k, v in query.items() if v is not None}}
    suffix = "?" + "&".join(f"{k}={quote(str(v))}" for k, v in params.items()) if params else ""
    return f"/api/v1/config/{quote(agent)}{tail}{suffix}"


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise click.BadParameter(f"{what} must be a JSON object")
    return value


def _version_rows(v: dict[str, Any]) -> list[tuple[str, Any]]:
    return [("version", v["version"]), ("tenant", v["tenant"] or "(the agent's own)"),
            ("author", v["author"]), ("comment", v["comment"]), ("created_at", v["created_at"]),
            ("config", v["config"])]  # fmt: skip


tenant_option = click.option("--tenant", help="A tenant's override [default: the agent's own config].")


@config.command("get")
@click.argument("agent")
@tenant_option
@output_option
@click.pass_obj
def get(obj: Ctx, agent: str, tenant: str | None, output: str) -> None:
    """The newest version, and the config the tenant's runs read (merged)."""
    data = _run(_call(obj, "GET", _path(agent, tenant=tenant)))
    current = data["current"]
    rows = _version_rows(current) if current else [("version", "(none: the defaults)")]
    _emit(output, data, [*rows, ("merged", data["merged"])])


@config.command("set")
@click.argument("agent")
@tenant_option
@click.option("--config", "whole", help="The whole config as JSON (replaces the current one).")
@click.option("--values", help="The values the agent reads, as a JSON object (replaces them).")
@click.option("--enable/--disable", "enabled", default=None, help="The kill switch.")
@click.option("--max-concurrent", type=int, help="Running at once across the fleet.")
@click.option("--max-daily", type=int, help="Executions per UTC day.")
@click.option("--budget", type=float, help="Spend per --budget-period (hard: refused once spent).")
@click.option("--budget-period", type=click.Choice(["hour", "day", "week", "month"]), default="month",
              show_default=True)  # fmt: skip
@click.option("--pinned-version", help="Only workers of this agent version run the tasks.")
@click.option(
    "--mode",
    type=click.Choice(["pool", "dedicated"]),
    help="dedicated: only the agent's own workers run the tasks (a deploy starts them).",
)
@click.option("-m", "--comment", default="", help="Why, for the history.")
@output_option
@click.pass_obj
def set_(obj: Ctx, agent: str, tenant: str | None, whole: str | None, values: str | None,
         enabled: bool | None, max_concurrent: int | None, max_daily: int | None, budget: float | None,
         budget_period: str, pinned_version: str | None, mode: str | None, comment: str,
         output: str) -> None:  # fmt: skip
    """Store a new version: the current one with what the options change. Refused
    (nothing stored) with each invalid field and why."""

    async def go() -> Any:
        if whole is not None:
            new = _json_object(whole, "--config")
        else:
            current = (await _call(obj, "GET", _path(agent, tenant=tenant)))["current"]
            new = dict(current["config"]) if current else {}
        changes: dict[str, Any] = {
            "values": _json_object(values, "--values") if values is not None else None,
            "enabled": enabled, "max_concurrent": max_concurrent, "max_daily": max_daily,
            "budget": {"limit": budget, "period": budget_period} if budget is not None else None,
            "pinned_version": pinned_version, "mode": mode,
        }  # fmt: skip
        new.update({k: v for k, v in changes.items() if v is not None})
        return await _call(obj, "PUT", _path(agent, tenant=tenant), {"config": new, "comment": comment})

    data = _run(go())
    _emit(output, data, [*_version_rows(data["version"]), ("kv_revision", data["kv_revision"])])


@config.command("versions")
@click.argument("agent")
@tenant_option
@click.option("--limit", type=int, default=20, show_default=True)
@output_option
@click.pass_obj
def versions(obj: Ctx, agent: str, tenant: str | None, limit: int, output: str) -> None:
    """The history, newest first."""
    data = _run(_call(obj, "GET", _path(agent, "/versions", tenant, limit=limit)))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'VERSION':<9}{'CREATED':<27}{'AUTHOR':<16}COMMENT")
    for v in data["versions"]:
        click.echo(f"{v['version']:<9}{v['created_at'][:25]:<27}{v['author']:<16}{v['comment']}")


@config.command("diff")
@click.argument("agent")
@click.argument("from_version", type=int)
@click.argument("to_version", type=int)
@tenant_option
@output_option
@click.pass_obj
def diff(obj: Ctx, agent: str, from_version: int, to_version: int, tenant: str | None, output: str) -> None:
    """What changed from FROM_VERSION to TO_VERSION: paths added, removed, changed."""
    data = _run(_call(obj, "GET", _path(agent, "/diff", tenant, **{"from": from_version, "to": to_version})))
    if output == "json":
        _emit(output, data)
        return
    for change in data["changes"]:
        before, after = json.dumps(change.get("from")), json.dumps(change.get("to"))
        shown = {"added": f"+ {after}", "removed": f"- {before}", "changed": f"{before} -> {after}"}
        click.echo(f"{change['path']}: {shown[change['op']]}")
    if not data["changes"]:
        click.echo("(no difference)")


@config.command("rollback")
@click.argument("agent")
@click.option("--to", "to", type=int, required=True, help="The version whose config becomes current.")
@tenant_option
@output_option
@click.pass_obj
def rollback(obj: Ctx, agent: str, to: int, tenant: str | None, output: str) -> None:
    """Store a new version equal to version --to (nothing is ever deleted)."""
    data = _run(_call(obj, "POST", _path(agent, "/rollback", tenant), {"to": to}))
    _emit(output, data, [*_version_rows(data["version"]), ("kv_revision", data["kv_revision"])])


@config.command("watch")
@click.option("--agent", help="Only this agent's config and overrides.")
@output_option
@click.pass_obj
def watch(obj: Ctx, agent: str | None, output: str) -> None:
    """Print each config change as it arrives from KV af_config (needs NATS: AF_NATS_URL
    or the data dir's); Ctrl-C stops."""
    nats_url = os.environ.get("AF_NATS_URL") or read_state(obj.data_dir).nats_url
    if not nats_url:
        raise CliError("no NATS URL: set AF_NATS_URL or run `agent-factory up` first")
    asyncio.run(_watch(nats_url, agent, output))


async def _watch(nats_url: str, agent: str | None, output: str) -> None:
    from mesh.queue.agent_config import ConfigRecord, ConfigWatch  # noqa: PLC0415 (start-up time)
    from mesh.wire.connection import connect, jetstream  # noqa: PLC0415 (start-up time)

    def show(key: str, record: ConfigRecord | None) -> None:
        if record is None or (agent is not None and record.agent != agent):
            return
        if output == "json":
            click.echo(record.model_dump_json())
        else:
            whose = f"{record.agent} for {record.tenant}" if record.tenant else record.agent
            click.echo(f"{record.updated_at.isoformat()}  {whose}  version {record.version}  "
                       f"{json.dumps(record.config)}")  # fmt: skip

    nc = await connect(nats_url, name="agent-factory-config-watch")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    follower = ConfigWatch(nc, await jetstream(nc), on_change=show, name="watch")
    await follower.start()  # what is current, then each change as it comes
    try:
        await stop.wait()
    finally:
        await follower.stop()
        await nc.drain()

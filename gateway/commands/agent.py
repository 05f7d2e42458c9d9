"""``agent-factory agent …``: deploy, drain, retire, restart, force-stop an agent; its health, history."""

from __future__ import annotations

from typing import Any

import click

from gateway.commands.common import Ctx, _call, _emit, _run, output_option
from gateway.commands.ops import failed, start

__all__ = ["agent"]

_SLACK_S = 60.0  # a deploy's own time (warm-up), or on top of a drain


@click.group()
def agent() -> None:
    """An agent's lifecycle: what runs it, whether it takes tasks, what happened to it;
    its package (.glpack), made and checked on this machine; and the Agent Hub.

    \b
    agent-factory agent deploy fuel-combustion      # validate, warm up, RUNNING
    agent-factory agent status fuel-combustion      # versions, gate, what workers hold
    agent-factory agent retire fuel-combustion --drain-timeout 60
    agent-factory agent history fuel-combustion
    agent-factory agent pack ./scope2 --sign release.key   # a reproducible .glpack
    agent-factory agent verify scope2-electricity-1.4.0.glpack --trust release.pub
    agent-factory agent publish scope2-electricity-1.4.0.glpack    # checked, then in the hub
    agent-factory agent search electricity --tag ghg
    agent-factory agent fetch scope2-electricity@1.4.0
    agent-factory agent inspect scope2-electricity@1.4.0 --deps --format dot
    agent-factory agent compat scope2-electricity
    """


def _act(obj: Ctx, key: str, action: str, output: str, **body: Any) -> None:
    """Start the action (an operation, 202), follow it with a progress bar, say what it did."""
    payload = {"action": action, **{k: v for k, v in body.items() if v not in (None, False)}}
    timeout = float(body.get("drain_timeout_s") or 30.0) + _SLACK_S

    op = start(obj, f"/api/v1/agents/{key}/lifecycle", payload, timeout, show=output != "json")
    if output == "json":
        _emit(output, op)
        if op["status"] != "succeeded":
            raise click.exceptions.Exit(1)
        return
    out = op["result"]
    if out is None:  # it ended before it had anything to say (cancelled, its gateway stopped…)
        raise failed(op)
    for t in out["transitions"]:
        click.echo(f"  {t['from_state']} -> {t['to_state']}" + (f"   ({t['reason']})" if t["reason"] else ""))
    click.echo(
        f"{out['agent']} {out['version']}: {out['state']}" + (f" — {out['detail']}" if out["detail"] else "")
    )
    for held in out["held"]:
        click.echo(f"  still held by {held['worker']}: {held['running']} running, {held['held']} waiting")
    if op["status"] != "succeeded":
        raise click.exceptions.Exit(1)


_version = click.option(
    "--version", "version", help="The version to act on [default: the live one; deploy: the loaded one]."
)
_reason = click.option("--reason", help="Why, for the history.")
_drain = click.option(
    "--drain-timeout", "drain_timeout_s", type=click.FloatRange(0, 300, min_open=True), default=30.0,
    show_default=True, help="Seconds what runs may take to finish before it is handed back to the queue.",
)  # fmt: skip


@agent.command()
@click.argument("key")
@_version
@_reason
@output_option
@click.pass_obj
def deploy(obj: Ctx, key: str, version: str | None, reason: str | None, output: str) -> None:
    """Validate, deploy and warm up KEY; it takes tasks once RUNNING. Exit 1 if it FAILED."""
    _act(obj, key, "deploy", output, version=version, reason=reason)


@agent.command()
@click.argument("key")
@_version
@_reason
@_drain
@click.option("--wait", is_flag=True, help="Return once no worker holds any of its tasks.")
@output_option
@click.pass_obj
def drain(obj: Ctx, key: str, version: str | None, reason: str | None, drain_timeout_s: float, wait: bool,
          output: str) -> None:  # fmt: skip
    """Stop KEY taking tasks; what runs finishes. Its tasks wait in the queue."""
    _act(
        obj, key, "drain", output, version=version, reason=reason, drain_timeout_s=drain_timeout_s, wait=wait
    )


@agent.command()
@click.argument("key")
@_version
@_reason
@_drain
@output_option
@click.pass_obj
def retire(obj: Ctx, key: str, version: str | None, reason: str | None, drain_timeout_s: float,
           output: str) -> None:  # fmt: skip
    """Drain KEY, then retire it for good (what is still running at the timeout goes back to the queue)."""
    _act(obj, key, "retire", output, version=version, reason=reason, drain_timeout_s=drain_timeout_s)


@agent.command()
@click.argument("key")
@_version
@_reason
@_drain
@output_option
@click.pass_obj
def restart(obj: Ctx, key: str, version: str | None, reason: str | None, drain_timeout_s: float,
            output: str) -> None:  # fmt: skip
    """Drain KEY (handing back what outlasts the timeout), then deploy it again."""
    _act(obj, key, "restart", output, version=version, reason=reason, drain_timeout_s=drain_timeout_s)


@agent.command()
@click.argument("key")
@click.option("--to", "version", required=True, help="The earlier version to go back to.")
@_reason
@_drain
@output_option
@click.pass_obj
def rollback(
    obj: Ctx, key: str, version: str, reason: str | None, drain_timeout_s: float, output: str
) -> None:
    """Go back to an earlier version: the live one's `down` migration, the earlier one
    deployed, the live one retired.

    \b
    agent-factory agent rollback grid-check --to 0.1.0
    """
    _act(obj, key, "rollback", output, version=version, reason=reason, drain_timeout_s=drain_timeout_s)


@agent.command("force-stop")
@click.argument("key")
@_version
@_reason
@output_option
@click.pass_obj
def force_stop(obj: Ctx, key: str, version: str | None, reason: str | None, output: str) -> None:
    """Stop KEY now: what runs is cancelled and handed back to the queue (not counted as an attempt)."""
    _act(obj, key, "force-stop", output, version=version, reason=reason)


@agent.command()
@click.argument("key")
@output_option
@click.pass_obj
def status(obj: Ctx, key: str, output: str) -> None:
    """KEY's versions and states, the dispatch gate workers obey, what each worker holds."""

    data = _run(_call(obj, "GET", f"/api/v1/agents/{key}/health"))
    if output == "json":
        _emit(output, data)
        return
    click.echo(
        f"{data['agent']}: {data['status']}, gate {data['gate']}"
        + ("" if data["managed"] else " (not managed: no lifecycle record)")
    )
    for v in data["versions"]:
        click.echo(f"  {v['version']:<12}{v['state']:<15}{v['mode']:<10}{v['reason'] or ''}")
    for w in data["workers"]:
        said_by = w["probes"]
        probes = {k: said_by[k] for k in ("started", "ready", "alive") if said_by.get(k) is not None}
        said = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in probes.items())
        error = f" ({w['probes']['error']})" if w["probes"].get("error") else ""
        click.echo(f"  worker {w['worker']}: {w['running']} running, {w['held']} waiting"
                   + (f"; probes {said}{error}" if said else ""))  # fmt: skip


@agent.command()
@click.argument("key")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--before", type=click.IntRange(1), help="Only transitions older than this id (paging).")
@output_option
@click.pass_obj
def history(obj: Ctx, key: str, limit: int, before: int | None, output: str) -> None:
    """KEY's lifecycle transitions, newest first: when, who, from, to, why."""
    query = f"?limit={limit}" + (f"&before={before}" if before else "")

    data = _run(_call(obj, "GET", f"/api/v1/agents/{key}/history{query}"))
    if output == "json":
        _emit(output, data)
        return
    for t in data["transitions"]:
        click.echo(f"{t['id']:>6}  {t['at']}  {t['version']:<10}{t['from_state']:>13} -> {t['to_state']:<14}"
                   f"{t['actor']:<16}{t['reason'] or ''}")  # fmt: skip
    if data["next"]:
        click.echo(f"(more: --before {data['next']})")


from gateway.commands import agent_cache as _agent_cache  # noqa: E402, F401  (registers `agent cache`)
from gateway.commands import agent_create as _agent_create  # noqa: E402, F401  (registers create, test)
from gateway.commands import agent_deps as _agent_deps  # noqa: E402, F401  (registers `agent compat`)
from gateway.commands import agent_hub as _agent_hub  # noqa: E402, F401  (registers publish, search, versions, fetch)
from gateway.commands import agent_inspect as _agent_inspect  # noqa: E402, F401  (registers `agent inspect`)
from gateway.commands import agent_install as _agent_install  # noqa: E402, F401  (registers install, installed)
from gateway.commands import agent_pack as _agent_pack  # noqa: E402, F401  (registers pack, keygen, verify, inspect-pack)

"""``agent-factory queue …``: stats and dead letters."""

from __future__ import annotations

from typing import Any

import click

from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option
from gateway.commands.ops import failed as failed_operation
from gateway.commands.ops import start

__all__ = ["queue"]

_REPLAY_TIMEOUT_S = 3600.0  # replaying many dead letters: wait this long, then `ops wait` goes on


@click.group()
def queue() -> None:
    """Queue depth, in-flight work and dead letters."""


@queue.command()
@output_option
@click.pass_obj
def stats(obj: Ctx, output: str) -> None:
    """Waiting and in-flight tasks per agent and priority; STALLED when max_ack_pending
    is full, and the agent's dispatch gate when it is not open (e.g. closed (draining)):
    workers take no task of a closed agent."""
    data = _run(_call(obj, "GET", "/api/v1/queue/stats"))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'AGENT':<24}{'PRIO':<6}{'WAITING':>9}{'IN FLIGHT':>11}{'REDELIV':>9}  FLAGS")
    for lane in data["lanes"]:
        gate = lane.get("gate", "open")
        if not (lane["waiting"] or lane["in_flight"] or lane["redelivered"] or gate != "open"):
            continue
        flags = ["STALLED"] if lane["stalled"] else []
        flag = " ".join(flags + ([f"GATE {gate}"] if gate != "open" else []))
        click.echo(
            f"{lane['agent']:<24}{lane['priority']:<6}{lane['waiting']:>9}"
            f"{lane['in_flight']:>7}/{lane['max_in_flight']:<4}{lane['redelivered']:>8}  {flag}"
        )
    dead = data["dead_letters"]
    click.echo("dead letters: " + (", ".join(f"{a}={n}" for a, n in dead.items()) or "none"))


@queue.group()
def dlq() -> None:
    """List, inspect, replay and purge dead letters."""


@dlq.command("list")
@click.option("--agent", help="Only this agent's dead letters.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@output_option
@click.pass_obj
def dlq_list(obj: Ctx, agent: str | None, limit: int, output: str) -> None:
    """Dead letters, oldest first."""
    query = f"?limit={limit}" + (f"&agent={agent}" if agent else "")
    data = _run(_call(obj, "GET", "/api/v1/queue/dlq" + query))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'SEQ':<8}{'AGENT':<24}{'RUN':<34}{'TRIES':<7}LAST ERROR")
    for d in data["dead_letters"]:
        error = " ".join((d["last_error"] or d["reason"] or "").split())[:60]  # one line each
        click.echo(f"{d['seq']:<8}{d['agent']:<24}{d['run_id'] or '-':<34}{d['attempts']:<7}{error}")


@dlq.command("show")
@click.argument("seq", type=int)
@output_option
@click.pass_obj
def dlq_show(obj: Ctx, seq: int, output: str) -> None:
    """One dead letter: payload, headers and every attempt's error."""
    data = _run(_call(obj, "GET", f"/api/v1/queue/dlq/{seq}"))
    keys = ("seq", "name", "run_id", "tenant", "reason", "subject", "dead_at")
    rows = [(k, "-" if data.get(k) is None else data[k]) for k in keys]  # run_id: none for a channel's
    rows += [(f"attempt {e['attempt']}", f"{e['error_type']}: {e['error']}") for e in data["errors"]]
    rows.append(("payload", data.get("payload", data["payload_b64"])))
    _emit(output, data, rows)


def _selection(seq: int | None, agent: str | None, everything: bool) -> dict[str, Any]:
    if sum([seq is not None, agent is not None, everything]) != 1:
        raise CliError("give exactly one of SEQ, --agent or --all")
    if seq is not None:
        return {"seq": seq}
    return {"agent": agent} if agent else {"all": True}


@dlq.command("replay")
@click.argument("seq", type=int, required=False)
@click.option("--agent", help="Replay every dead letter of this agent.")
@click.option("--all", "everything", is_flag=True, help="Replay every dead letter.")
@output_option
@click.pass_obj
def dlq_replay(obj: Ctx, seq: int | None, agent: str | None, everything: bool, output: str) -> None:
    """Put dead letters back on their queue (same run ids)."""
    selection = _selection(seq, agent, everything)
    if seq is not None:
        data = _run(_call(obj, "POST", "/api/v1/queue/dlq/replay", selection))
    else:  # many: an operation, followed with a progress bar
        op = start(obj, "/api/v1/queue/dlq/replay", selection, _REPLAY_TIMEOUT_S, show=output != "json")
        if op["result"] is None:
            raise failed_operation(op)
        data = op["result"]
    failed = data.get("failed", [])
    rows = [("replayed", len(data["replayed"]))] + [("run", r) for r in data["replayed"]]
    rows += [("failed", len(failed))] + [(f"seq {f['seq']}", f["error"]) for f in failed]
    _emit(output, data, rows)
    if failed:
        raise SystemExit(1)


@dlq.command("purge")
@click.argument("seq", type=int, required=False)
@click.option("--agent", help="Purge every dead letter of this agent.")
@click.option("--all", "everything", is_flag=True, help="Purge every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@output_option
@click.pass_obj
def dlq_purge(obj: Ctx, seq: int | None, agent: str | None, everything: bool, yes: bool, output: str) -> None:
    """Delete dead letters for good."""
    selection = _selection(seq, agent, everything)
    if not yes and seq is None:
        whose = "all" if everything else f"{agent}'s"
        click.confirm(f"Delete {whose} dead letters?", abort=True, err=True)
    data = _run(_call(obj, "POST", "/api/v1/queue/dlq/purge", selection))
    _emit(output, data, [("purged", data["purged"])])

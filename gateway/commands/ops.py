"""``agent-factory ops …``: long operations (deploy, drain, replaying dead letters…):
list them, show one, wait for one with a progress bar, cancel one.

:func:`follow` is how every command that starts one (``agent deploy``, ``queue dlq
replay --all``…) waits for it: a bar on a terminal, a line per step otherwise.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from typing import Any, Final, TextIO

import click

from gateway.client import ApiClient, ApiError
from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option

__all__ = ["Progress", "failed", "follow", "ops", "start"]

FINAL: Final = frozenset({"succeeded", "failed", "cancelled"})
_WIDTH: Final = 30


class Progress:
    """Shows an operation as it goes, on stderr: a bar redrawn in place on a
    terminal; else one line each time its message changes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._said = ""

    def update(self, op: dict[str, Any]) -> None:
        percent, message = float(op["progress"]), str(op["message"])
        if self.tty:
            filled = int(_WIDTH * percent / 100)
            line = f"[{'#' * filled}{'.' * (_WIDTH - filled)}] {percent:3.0f}%  {message}"
            columns = shutil.get_terminal_size().columns  # one row less one column: no wrap, ever
            self.stream.write("\r" + line[: columns - 1].ljust(columns - 1))
        elif message != self._said:
            self.stream.write(f"  [{percent:3.0f}%] {message}\n")
        self._said = message
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


async def _wait(
    api: ApiClient, op: dict[str, Any], timeout: float, progress: Progress | None
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pause = 0.05
    while True:
        if progress is not None:
            progress.update(op)
        if op["status"] in FINAL:
            return op
        if time.monotonic() > deadline:
            raise ApiError(f"operation {op['id']} is still {op['status']} after {timeout:g} s "
                           f"(follow it: agent-factory ops wait {op['id']})")  # fmt: skip
        await asyncio.sleep(pause)
        pause = min(1.0, pause * 1.5)
        op = await api.request("GET", op["url"])


def follow(obj: Ctx, op: dict[str, Any], timeout: float, *, show: bool = True) -> dict[str, Any]:
    """Wait for the accepted operation ``op`` to end, showing its progress; the
    operation as it ended."""
    progress = Progress() if show else None

    async def waiting() -> dict[str, Any]:
        async with obj.client(30.0) as api:
            return await _wait(api, op, timeout, progress)

    try:
        return _run(waiting())
    finally:
        if progress is not None:
            progress.close()


def start(obj: Ctx, path: str, body: Any, timeout: float, *, show: bool = True) -> dict[str, Any]:
    """POST ``body`` to a route that answers 202 with an operation, and follow it to its end."""
    accepted = _run(_call(obj, "POST", path, body))
    return follow(obj, accepted, timeout, show=show)


def _line(op: dict[str, Any]) -> str:
    return (f"{op['id']}  {op['kind']:<17}{op['target'][:24]:<26}{op['status']:<11}{op['progress']:>4.0f}%  "
            f"{op['created_at'][:19]}  {op['message'][:60]}")  # fmt: skip


@click.group()
def ops() -> None:
    """Long operations: deploys, drains, dead letters replayed…

    \b
    agent-factory ops ls --status running
    agent-factory ops get 3f9c…            # status, progress, result or error, history
    agent-factory ops wait 3f9c…           # a progress bar; exit 1 if it failed or was cancelled
    agent-factory ops cancel 3f9c…
    """


@ops.command("ls")
@click.option("--status", "statuses", multiple=True,
              type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]))  # fmt: skip
@click.option("--kind", "kinds", multiple=True, help="e.g. agent.deploy, dlq.replay (repeatable).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@output_option
@click.pass_obj
def ls(obj: Ctx, statuses: tuple[str, ...], kinds: tuple[str, ...], limit: int, output: str) -> None:
    """Operations, newest first."""
    query = "&".join([f"limit={limit}", *(f"status={s}" for s in statuses), *(f"kind={k}" for k in kinds)])
    data = _run(_call(obj, "GET", f"/api/v1/operations?{query}"))
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"{'ID':<34}{'KIND':<17}{'TARGET':<26}{'STATUS':<11}{'DONE':>5}  {'CREATED':<21}MESSAGE")
    for op in data["operations"]:
        click.echo(_line(op))


_FIELDS: Final = (
    "id", "kind", "target", "tenant", "status", "progress", "message", "error", "created_by", "owner",
    "attempts", "created_at", "started_at", "finished_at", "cancel_requested_at",
)  # fmt: skip


def _show(op: dict[str, Any], output: str) -> None:
    if output == "json":
        _emit(output, op)
        return
    rows = [(f, op[f]) for f in _FIELDS if op.get(f) not in (None, "")]
    _emit(output, op, [*rows, ("result", op["result"])])
    for e in op.get("history") or []:
        at = e["at"][:23]
        click.echo(f"  {e['seq']:>4}  {at}  {e['status']:<10}{e['progress']:>4.0f}%  {e['message']}")


@ops.command("get")
@click.argument("op_id", metavar="ID")
@output_option
@click.pass_obj
def get(obj: Ctx, op_id: str, output: str) -> None:
    """One operation: status, progress, timestamps, result or error, its history."""
    _show(_run(_call(obj, "GET", f"/api/v1/operations/{op_id}")), output)


@ops.command("wait")
@click.argument("op_id", metavar="ID")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=3600.0, show_default=True,
              help="Seconds to wait at most.")  # fmt: skip
@output_option
@click.pass_obj
def wait(obj: Ctx, op_id: str, timeout: float, output: str) -> None:
    """Wait for an operation to end, with a progress bar; exit 1 if it failed or was cancelled."""
    op = follow(obj, _run(_call(obj, "GET", f"/api/v1/operations/{op_id}")), timeout)
    if output == "json":
        _emit(output, op)
    else:
        click.echo(f"{op['id']}: {op['status']}" + (f" — {op['error']}" if op["error"] else ""))
    if op["status"] != "succeeded":
        raise click.exceptions.Exit(1)


@ops.command("cancel")
@click.argument("op_id", metavar="ID")
@output_option
@click.pass_obj
def cancel(obj: Ctx, op_id: str, output: str) -> None:
    """Ask an operation to stop at its next step (what it did stays done)."""
    op = _run(_call(obj, "DELETE", f"/api/v1/operations/{op_id}"))
    if output == "json":
        _emit(output, op)
        return
    click.echo(f"{op['id']}: cancellation asked; it stops at its next step (ops wait {op['id']})")


def failed(op: dict[str, Any]) -> CliError:
    """The one line a command that followed ``op`` ends with when it did not succeed."""
    return CliError(f"operation {op['id']} {op['status']}: {op['error'] or op['message']}")

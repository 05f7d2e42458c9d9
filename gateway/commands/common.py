"""Helpers every CLI command uses: context, output, one-line errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from gateway.client import ApiClient, ApiError
from gateway.state import read_state
from mesh import names

__all__ = ["OUTPUTS", "CliError", "Ctx", "_call", "_emit", "_run", "output_option"]

T = TypeVar("T")


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ApiError as exc:
        raise CliError(str(exc)) from exc


class Ctx:
    def __init__(self, data_dir: Path, api_url: str | None, token: str | None, verbose: bool):
        self.data_dir, self.verbose = data_dir, verbose
        self._api_url, self._token = api_url, token

    def client(self, timeout: float = 30.0) -> ApiClient:
        state = read_state(self.data_dir)
        url = self._api_url or state.api_url
        if not url:
            raise CliError(
                f"no gateway found in {self.data_dir / names.STATE_FILE}: start one with "
                "`agent-factory up`, or pass --api-url / --data-dir"
            )
        return ApiClient(url, self._token or state.token, timeout)


async def _call(obj: Ctx, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One API request with the CLI's gateway and token (``timeout``: the whole request)."""
    async with obj.client(timeout) as api:
        return await api.request(method, path, body)


def _emit(output: str, data: Any, table: list[tuple[str, Any]] | None = None) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, default=str))
        return
    rows = table or []
    width = max((len(key) for key, _ in rows), default=0) + 2
    for key, value in rows:
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        click.echo(f"{key:<{width}}{value}")


OUTPUTS = click.Choice(["table", "json"])


def _resolved_output(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """A command's own ``-o`` wins; else the one given before the command
    (``agent-factory -o json …``); else ``table``."""
    if value is not None:
        return value
    given = ctx.find_root().params.get("output")
    return given if isinstance(given, str) else "table"


# Every command that prints data takes this: it injects ``output: str``.
output_option = click.option(
    "--output", "-o", type=OUTPUTS, default=None, callback=_resolved_output,
    help="table for people, json for scripts [default: the -o given before the command, else table]",
)  # fmt: skip

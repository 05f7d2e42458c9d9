"""The ``agent-factory`` command tree, parsed as click parses it, without running a command."""

from __future__ import annotations

from collections.abc import Iterator

import click

from gateway.cli import cli

__all__ = ["command_context", "command_paths"]


def command_context(args: list[str], *, resilient: bool = False) -> click.Context:
    """The context of the command ``args`` name, as click builds it before invoking
    it: raises click's own error for an unknown command or option, or arguments
    that do not fit. ``resilient`` skips the checks of required values."""
    ctx = cli.make_context("agent-factory", list(args), resilient_parsing=resilient)
    command: click.Command = cli
    while isinstance(command, click.Group):
        # A group stops parsing at its subcommand's name: the word before ctx.args.
        name = args[len(args) - len(ctx.args) - 1]
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"no command {name!r} under {ctx.command_path!r}")
        args = list(ctx.args)
        ctx = sub.make_context(name, list(args), parent=ctx, resilient_parsing=resilient)
        command = sub
    return ctx


def command_paths(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command (not group) under ``group``, e.g. ``("queue", "dlq", "list")``."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*path, name))
        elif command is not None:
            yield (*path, name)

"""``-o/--output`` is global: given before any command it applies, a command's own wins.

Walks the whole command tree, so a command added later that prints through
``output_option`` is covered without touching this test.
"""

from __future__ import annotations

import pytest

from gateway.cli import cli
from tests.cli_tree import command_context, command_paths

PRINTING = [path for path in command_paths() if "output" in command_context([*path], resilient=True).params]


def output(args: list[str]) -> str:
    value = command_context(args, resilient=True).params["output"]
    assert isinstance(value, str)
    return value


def test_the_commands_that_print_data_take_the_output_option() -> None:
    names = {" ".join(path) for path in PRINTING}
    assert {"run", "get", "status", "queue stats", "queue dlq list", "channels ls", "schedule ls"} <= names


@pytest.mark.parametrize("path", PRINTING, ids=" ".join)
def test_output_given_before_the_command_applies_and_its_own_wins(path: tuple[str, ...]) -> None:
    cli.make_context("agent-factory", ["-o", "json", *path])  # the root takes it (strictly)
    assert output([*path]) == "table"
    assert output(["-o", "json", *path]) == "json"
    assert output(["--output", "json", *path]) == "json"
    assert output(["--output=json", *path]) == "json"
    assert output([*path, "-o", "json"]) == "json"
    assert output(["-o", "json", *path, "-o", "table"]) == "table"  # the command's own wins
    assert output(["-o", "table", *path, "--output", "json"]) == "json"

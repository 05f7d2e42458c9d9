"""``-o/--output`` is global: given before any command it applies, a command's own wins.

Walks the whole command tree, so a command added later that prints through
``output_option`` is covered without touching this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(("flags", "level"), [([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG")])
def test_each_v_says_more(flags: list[str], level: str, tmp_path: Path) -> None:
    script = (
        "import logging, sys\n"
        "from gateway.cli import main\n"
        f"sys.argv = ['agent-factory', *{flags!r}, 'agent', 'cache', 'ls']\n"
        "main()\n"
        "print(logging.getLevelName(logging.getLogger().level))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "AF_CACHE_DIR": str(tmp_path)})  # fmt: skip
    assert done.stdout.splitlines()[-1] == level

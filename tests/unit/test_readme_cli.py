"""Every CLI line the README shows, and every command `up` suggests, fits the real CLI.

A line in a README code block that starts with ``agent-factory``,
``.venv/bin/agent-factory`` or ``make`` (after ``VAR=value`` words), and
every inline ``agent-factory …`` example, is parsed by click's own
``make_context`` down the command tree, without running anything: the
command path must exist, every option too, and the arguments must fit
(count and type). The usage table's rows (``[--wait]``, ``list\\|show``,
placeholders) are expanded and checked for their commands and options.
``make`` lines must name a target of the Makefile.

Run for real elsewhere: ``agent-factory up`` (with ``--agent``) and
``agent-factory run … --wait`` by tests/integration/gateway/test_up.py on a real
``up``; ``make test`` by CI (``.ci/run`` runs exactly it).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from gateway.cli import cli
from gateway.settings import Settings
from gateway.up import Platform
from tests.cli_tree import command_context

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PROGRAMS = ("agent-factory", ".venv/bin/agent-factory")
ENV_WORD = re.compile(r"[A-Z_][A-Z0-9_]*=\S*\Z")
INLINE = re.compile(r"`((?:\.venv/bin/)?agent-factory [^`]+|make(?: [^`]+)?)`")
METASYNTAX = re.compile(r"[\[\]()…]|\\\|")


def readme_lines() -> list[tuple[str, str, bool]]:
    """(where, line, exact) of every CLI line of the README; ``exact`` lines are
    complete commands, the others usage syntax."""
    found: list[tuple[str, str, bool]] = []
    fenced, pending, start = False, "", 0
    for number, text in enumerate(README.read_text().splitlines(), 1):
        if text.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            for match in INLINE.finditer(text):
                span = match.group(1)
                found.append((f"README.md:{number}", span, not METASYNTAX.search(span)))
            continue
        if not pending:
            start = number
        pending += text.strip()
        if pending.endswith("\\"):  # continued on the next line
            pending = pending[:-1] + " "
            continue
        line, pending = pending, ""
        head = [w for w in line.split() if not ENV_WORD.match(w)][:1]
        if not head or (head[0] not in PROGRAMS and head[0] != "make"):
            continue  # not a command line (a layout drawing, a code sample): not shell
        words = shlex.split(line, comments=True)
        while words and ENV_WORD.match(words[0]):
            words.pop(0)
        if words and (words[0] in PROGRAMS or words[0] == "make"):
            found.append((f"README.md:{start}", line, True))
    return found


def usage_variants(text: str) -> list[str]:
    """Usage syntax expanded: ``a b\\|c`` is ``a b`` and ``a c``; ``(x\\|y)`` each of x, y;
    ``[…]`` is included; ``…`` is dropped."""
    text = text.replace("…", " ").replace("[", " ").replace("]", " ")
    group = re.search(r"\(([^()]*)\)", text)
    if group:
        out: list[str] = []
        for choice in group.group(1).split("\\|"):
            out += usage_variants(text[: group.start()] + choice + text[group.end() :])
        return list(dict.fromkeys(out))
    first, *others = text.split("\\|")
    prefix = " ".join(first.split()[:-1])
    return list(dict.fromkeys([first, *(f"{prefix} {other}" for other in others)]))


def check_usage(words: list[str]) -> None:
    """The command path of ``words`` exists and every option named exists on its command."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="agent-factory")
    descending, skip = True, False
    for word in words:
        if skip:
            skip = False
            continue
        if word.startswith("-"):
            option = next((p for p in command.get_params(ctx) if word.split("=")[0] in p.opts), None)
            if option is None:
                raise click.NoSuchOption(word, ctx=ctx)
            skip = isinstance(option, click.Option) and not option.is_flag and "=" not in word
        elif descending and isinstance(command, click.Group):
            sub = command.get_command(ctx, word)
            if sub is None:
                raise click.UsageError(f"no command {word!r} under {ctx.command_path!r}")
            command, ctx = sub, click.Context(sub, info_name=word, parent=ctx)
        else:
            descending = False  # an argument: the command is found


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", makefile, re.MULTILINE))


def check_line(line: str, exact: bool) -> None:
    if not exact:
        for variant in usage_variants(line):
            check_usage(shlex.split(variant)[1:])
        return
    words = shlex.split(line, comments=True)
    while ENV_WORD.match(words[0]):
        words.pop(0)
    if words[0] == "make":
        missing = set(words[1:]) - make_targets()
        if missing:
            raise click.UsageError(f"the Makefile has no target {', '.join(sorted(missing))}")
        return
    command_context(words[1:])


LINES = readme_lines()


def test_the_readme_has_cli_lines_to_check() -> None:
    exact = [line for _, line, is_exact in LINES if is_exact]
    assert len(exact) >= 10, exact  # the extraction found them (code blocks and inline)
    assert any(line.startswith(".venv/bin/agent-factory run fuel-combustion") for line in exact)
    assert any(not is_exact for _, _, is_exact in LINES)  # the usage table


@pytest.mark.parametrize(("where", "line", "exact"), LINES, ids=[f"{w} {line}" for w, line, _ in LINES])
def test_readme_cli_line_fits_the_cli(where: str, line: str, exact: bool) -> None:
    try:
        check_line(line, exact)
    except click.ClickException as exc:
        pytest.fail(f"{where}: `{line}` does not fit the CLI: {exc.format_message()}")


def test_the_parser_rejects_what_the_cli_rejects() -> None:
    for bad in (["no-such-command"], ["run", "noop", "--no-such-option"], ["queue", "dlq", "show", "x"],
                ["run", "noop"], ["status", "extra"]):  # fmt: skip
        with pytest.raises(click.ClickException):
            command_context(bad)
    for bad_usage in (["queue", "nope"], ["up", "--nope", "1"]):
        with pytest.raises(click.ClickException):
            check_usage(bad_usage)
    assert command_context(["queue", "dlq", "list", "--limit", "5"]).params["limit"] == 5


def banner_commands(data_dir: Path) -> list[str]:
    banner = Platform(Settings(data_dir=data_dir), say=False).banner()
    return [line.strip() for line in banner.splitlines() if line.strip().startswith(PROGRAMS)]


def test_up_banner_suggests_commands_for_its_own_data_dir(tmp_path: Path) -> None:
    second = tmp_path / "second up"
    suggested = banner_commands(second)
    assert len(suggested) == 2
    for line in suggested:
        ctx = command_context(shlex.split(line)[1:])
        assert ctx.find_root().params["data_dir"] == second, line
    default = Settings.model_fields["data_dir"].default
    for line in banner_commands(default):
        assert "--data-dir" not in line  # the default needs no flag
        command_context(shlex.split(line)[1:])

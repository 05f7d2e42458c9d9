"""``agent-factory agent create | test``: start a package, and run its tests.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module). Neither needs a gateway: create writes files
(:mod:`agents.packaging.scaffold`), test runs the package's ``tests/`` with
pytest, as a developer does, or confined as the hub does (``--confined``), or
starts a throwaway stack of its own to try the package on (``--stack``,
:mod:`gateway.pack_stack`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from agents.hub.testrun import run_pack_tests
from agents.packaging.errors import PackagingError
from agents.packaging.scaffold import TEMPLATES, Template, create
from agents.packaging.spec import PackSpec, load_spec
from gateway.commands.agent import agent
from gateway.commands.common import CliError, _emit, output_option

if TYPE_CHECKING:
    from gateway.pack_stack import StackReport

__all__ = ["create_command", "test_command"]


@agent.command("create")
@click.option("--name", help="The agent's name: lowercase words joined by '-', e.g. scope2-electricity.")
@click.option("--template", type=click.Choice(TEMPLATES), default=None,
              help="deterministic (a calculation), reasoning (a decision with reasons, where a "
                   "model would be called) or insight (a summary over records) "
                   "[default: deterministic].")  # fmt: skip
@click.option("--description", default=None, help="One line: what it does.")
@click.option("--author", default="", help="For agent.pack.yaml's metadata.")
@click.option("--dir", "parent", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where the package's directory is made.")  # fmt: skip
@output_option
def create_command(name: str | None, template: str | None, description: str | None, author: str,
                   parent: Path, output: str) -> None:  # fmt: skip
    """Make a new agent package in ./NAME: agent.pack.yaml, its code, tests that pass,
    an example input and a README. Without --name on a terminal, asks for each.

    \b
    agent-factory agent create                                  # asks
    agent-factory agent create --name scope2-electricity --template deterministic
    cd scope2-electricity && agent-factory agent test
    """
    started = time.monotonic()
    if name is None:
        if not sys.stdin.isatty():
            raise CliError("give --name (and --template): there is no terminal to ask on")
        name = click.prompt("Agent name (lowercase words joined by '-')", type=str)
        template = template or click.prompt("Template", type=click.Choice(TEMPLATES), default="deterministic")
        description = description or click.prompt(
            "What does it do (one line)", default="", show_default=False
        )
    chosen = cast(Template, template or "deterministic")
    try:
        root = create(parent, name, chosen, description=description or "", author=author)
    except PackagingError as exc:
        raise CliError(str(exc)) from None
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    data = {"directory": str(root), "name": name, "template": chosen, "files": files,
            "seconds": round(time.monotonic() - started, 3)}  # fmt: skip
    if output == "json":
        _emit(output, data)
        return
    click.echo(f"created {root} ({chosen}): {', '.join(files)}")
    click.echo(f"next: cd {root} && agent-factory agent test")


@agent.command("test")
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--coverage", is_flag=True, help="Also measure which lines of the agent's code the tests run.")
@click.option("--confined", is_flag=True,
              help="Run them as the hub does before it accepts a version: no network, memory and time "
                   "bounded (docs/hub.md).")  # fmt: skip
@click.option("--stack", is_flag=True,
              help="Start a throwaway embedded stack serving the agent, run examples/*.json through its "
                   "queue (each result checked against the output schema), then the tests with "
                   "AF_TEST_STACK=1 and AF_API_URL, AF_API_TOKEN, AF_NATS_URL pointing at it.")  # fmt: skip
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="--confined: seconds at most; --stack: for each example's run.")  # fmt: skip
@output_option
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def test_command(directory: Path, coverage: bool, confined: bool, stack: bool, timeout: float, output: str,
                 pytest_args: tuple[str, ...]) -> None:  # fmt: skip
    """Run the tests of the package in DIRECTORY (default: .) with pytest; exit with
    pytest's code. Arguments after -- go to pytest.

    \b
    agent-factory agent test
    agent-factory agent test --coverage
    agent-factory agent test ./scope2 --confined
    agent-factory agent test --stack          # on a real embedded stack, with its examples
    agent-factory agent test -- -k converts -x
    """
    root = directory.resolve()
    try:
        spec = load_spec(root)
    except PackagingError as exc:
        raise CliError(str(exc)) from None
    if stack:
        if confined or coverage:
            raise CliError("--stack runs the package on a real stack: not with --confined or --coverage")
        _test_on_a_stack(root, spec, timeout, output, pytest_args)
        return
    if confined:
        if coverage or pytest_args:
            raise CliError(
                "--confined runs the tests exactly as the hub does: no --coverage, no pytest arguments"
            )
        try:
            run = asyncio.run(run_pack_tests(root, timeout_s=timeout))
        except PackagingError as exc:
            raise CliError(str(exc)) from None
        click.echo(f"{spec.name} {spec.version}: {run.summary} (confined, {run.duration_s:g} s)")
        return
    if not (root / "tests").is_dir():
        raise CliError(f"{root} has no tests/ directory: the hub refuses a package without tests")
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests", *pytest_args]
    if coverage:
        if importlib.util.find_spec("pytest_cov") is None:
            raise CliError("--coverage needs pytest-cov in this environment: pip install pytest-cov")
        module = spec.entry_point.partition(":")[0].partition(".")[0]
        args[3:3] = [f"--cov={module}", "--cov-report=term-missing"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("AF_TEST_STACK", None)  # its stack tests skip: there is no stack of its own here
    raise SystemExit(subprocess.call(args, cwd=root, env=env))


def _test_on_a_stack(root: Path, spec: PackSpec, timeout: float, output: str,
                     pytest_args: tuple[str, ...]) -> None:  # fmt: skip
    """``agent test --stack``: exit 0 when every example and test passed, else 1 with a summary."""
    if not (root / "tests").is_dir():
        raise CliError(f"{root} has no tests/ directory: the hub refuses a package without tests")
    started = time.monotonic()
    report = asyncio.run(_stack_report(root, spec, timeout, pytest_args))
    report.seconds = round(time.monotonic() - started, 2)
    if output == "json":
        _emit(output, report.as_json())
    else:
        if report.tests is not None:
            click.echo(report.tests.output)
        click.echo(_summary(report))
    if not report.passed:
        raise SystemExit(1)


async def _stack_report(
    root: Path, spec: PackSpec, timeout: float, pytest_args: tuple[str, ...]
) -> StackReport:
    """:func:`~gateway.pack_stack.try_on_stack`; SIGINT or SIGTERM stops the stack
    and ends the report (a second one cuts the stop short: its servers die with us)."""
    from gateway.pack_stack import StackReport, try_on_stack  # noqa: PLC0415 (start-up time: the gateway)

    report = StackReport(spec.name, spec.version)

    def say(text: str) -> None:
        click.echo(text, err=True)

    trying = asyncio.ensure_future(try_on_stack(report, root, spec, timeout, pytest_args, say))
    signals: list[str] = []

    def interrupt(sig: signal.Signals) -> None:
        signals.append(sig.name)
        say(f"{sig.name}: " + ("stopping the stack …" if len(signals) == 1 else "not waiting for the stop"))
        trying.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        await trying
    except asyncio.CancelledError:
        if not signals:
            raise
        report.error = f"interrupted ({signals[0]})"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return report


def _summary(report: StackReport) -> str:
    verdict = "passed" if report.passed else "FAILED"
    started = f", the stack started in {report.stack.started_s:g} s" if report.stack else ""
    lines = [f"{report.agent} {report.version} on a stack: {verdict} ({report.seconds:g} s{started})"]
    if report.error:
        lines.append(f"  {report.error}")
    for example in report.examples:
        line = f"  {'pass' if example.passed else 'FAIL'}  {example.example}  {example.seconds:g} s"
        lines.append(line + ("  " + example.error.replace("\n", "\n  ") if example.error else ""))
    if not report.examples and report.stack is not None:
        lines.append("  (no examples/*.json)")
    if report.tests is not None:
        lines.append(f"  {'pass' if report.tests.passed else 'FAIL'}  tests  {report.tests.seconds:g} s  "
                     f"{report.tests.summary}")  # fmt: skip
    return "\n".join(lines)

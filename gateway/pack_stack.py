"""``agent test --stack``: a package tried on a real, throwaway embedded stack.

:func:`stack_for` starts what ``up`` starts (:class:`gateway.up.Platform`:
nats-server, PostgreSQL, the gateway, one worker pool), in a temporary data
dir, on free ports, without stream processors; the gateway serves the
package's agent (imported from its directory), the worker serves it alone
(``worker --package-dir``, as an installed version's workers do). Then
:func:`run_examples` submits each ``examples/*.json`` through the API and the
queue and checks each result against the package's output schema, and
:func:`run_stack_tests` runs the package's tests with ``AF_TEST_STACK=1`` and
the stack's address in ``AF_API_URL``, ``AF_API_TOKEN`` and ``AF_NATS_URL``.

Everything started is stopped when :func:`stack_for` exits, however it exits,
and the data dir is removed: no server, worker or file outlives the command.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from jsonschema import Draft202012Validator

from agents.contract import Agent
from agents.errors import AgentError
from agents.packaging.spec import PackSpec
from agents.registry import AgentLoadError, load_package
from gateway.client import ApiClient, ApiError
from gateway.settings import Settings
from gateway.up import Platform
from mesh.embedded import find_free_port
from mesh.errors import ConnectionFailed

__all__ = [
    "ExampleResult",
    "Stack",
    "StackReport",
    "TestsResult",
    "run_examples",
    "run_stack_tests",
    "stack_for",
    "try_on_stack",
]

STACK_ENV: Final = "AF_TEST_STACK"  # set to 1 for the package's tests: its stack tests run, not skip
OUTPUT_TAIL: Final = 4000  # characters of pytest's output kept in the report
_MAX_ERRORS: Final = 5


@dataclass
class Stack:
    """Where the running stack answers, and the processes it holds."""

    api_url: str
    token: str
    nats_url: str
    pids: dict[str, int]  # nats-server, postgres, worker-0: all gone once stopped
    started_s: float  # from nothing to the API answering (the worker may still be starting)
    stopped_s: float | None = None  # how long the stop took, once stopped


@dataclass(frozen=True)
class ExampleResult:
    example: str  # its path in the package
    passed: bool
    seconds: float
    run_id: str | None = None
    status: str | None = None  # the run's: succeeded, failed, … (None: refused at submit)
    error: str | None = None  # what failed, in one paragraph


@dataclass(frozen=True)
class TestsResult:
    __test__ = False  # not a pytest class

    passed: bool
    exit_code: int
    seconds: float
    summary: str  # pytest's last line
    output: str  # its tail


@dataclass
class StackReport:
    agent: str
    version: str
    stack: Stack | None = None
    examples: list[ExampleResult] = field(default_factory=list)
    tests: TestsResult | None = None
    error: str | None = None  # the stack did not start, or the package cannot be served
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        examples_ok = all(e.passed for e in self.examples)
        return self.error is None and examples_ok and self.tests is not None and self.tests.passed

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        if self.stack is not None:
            del data["stack"]["token"], data["stack"]["nats_url"]  # throwaway, but secrets all the same
        return data


async def try_on_stack(
    report: StackReport, root: Path, spec: PackSpec, timeout_s: float, pytest_args: tuple[str, ...],
    say: Callable[[str], None],
) -> None:  # fmt: skip
    """The whole of ``agent test --stack``, filling ``report`` as it goes (so a cancel
    leaves what was done in it): start, the examples, the tests, the stop."""
    try:
        async with stack_for(root, say) as (stack, served):
            report.stack = stack
            say(f"running {len(list((root / 'examples').glob('*.json')))} example(s) through the queue …")
            schema = output_schema(root, spec, served)
            report.examples = await run_examples(stack, root, served.key, schema, timeout_s, say)
            say("running the tests against the stack …")
            report.tests = await run_stack_tests(stack, root, pytest_args)
    except AgentLoadError as exc:  # before any server started
        report.error = f"cannot serve the package: {exc}"
    except (ConnectionFailed, AgentError, OSError, ValueError) as exc:  # ValueError: a schema file's JSON
        report.error = f"the stack failed: {exc}"


@asynccontextmanager
async def stack_for(root: Path, say: Callable[[str], None]) -> AsyncIterator[tuple[Stack, Agent[Any, Any]]]:
    """A running embedded stack serving the package in ``root``, and its agent (as
    the gateway loaded it); stopped and its data dir removed on exit."""
    agent = next(iter(load_package(root)))  # AgentLoadError before any server starts
    started = time.monotonic()
    stack: Stack | None = None
    with tempfile.TemporaryDirectory(prefix="af-stack-") as data_dir:
        settings = Settings(
            data_dir=Path(data_dir), nats_url=None, database_url=None, api_token=None, port=find_free_port(),
            workers=1, worker_concurrency=4, processors="off", drain_timeout_s=5.0, log_stream=False,
            access_log=False, agents=f"{type(agent).__module__}:{type(agent).__name__}",
        )  # fmt: skip
        platform = Platform(
            settings, package_dir=root, stop_timeout_s=20.0,
            child_env={"AF_LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        try:
            await platform.start()
            assert platform.gateway is not None and platform.children is not None
            pids = {c.name: c.proc.pid for c in platform.children.children if c.proc is not None}
            if platform.nats is not None and platform.nats.pid is not None:
                pids["nats-server"] = platform.nats.pid
            if platform.postgres is not None and platform.postgres.pid is not None:
                pids["postgres"] = platform.postgres.pid
            stack = Stack(platform.gateway.api_url, platform.state.token or "", platform.state.nats_url or "",
                          pids, round(time.monotonic() - started, 2))  # fmt: skip
            say(f"stack up in {stack.started_s:g} s: API {stack.api_url}")
            yield stack, platform.gateway.registry.get(agent.key)
        finally:
            say("stopping the stack …")
            stopping = time.monotonic()
            await platform.stop()
            if stack is not None:
                stack.stopped_s = round(time.monotonic() - stopping, 2)


def output_schema(root: Path, spec: PackSpec, agent: Agent[Any, Any]) -> dict[str, Any]:
    """The pack's ``output_schema`` file, else the JSON schema of the agent's Output model."""
    if spec.output_schema is not None:
        loaded: dict[str, Any] = json.loads((root / spec.output_schema).read_text())
        return loaded
    return agent.Output.model_json_schema()


async def run_examples(
    stack: Stack, root: Path, agent: str, schema: dict[str, Any], timeout_s: float,
    say: Callable[[str], None],
) -> list[ExampleResult]:  # fmt: skip
    """Each ``examples/*.json`` submitted as a run, waited for, its result checked."""
    validator = Draft202012Validator(schema)
    results: list[ExampleResult] = []
    async with ApiClient(stack.api_url, stack.token) as api:
        for path in sorted((root / "examples").glob("*.json")):
            result = await _one_example(
                api, path.relative_to(root).as_posix(), path, agent, validator, timeout_s
            )
            say(f"  {'PASS' if result.passed else 'FAIL'} {result.example} ({result.seconds:g} s)"
                + (f": {result.error}" if result.error else ""))  # fmt: skip
            results.append(result)
    return results


async def _one_example(
    api: ApiClient, name: str, path: Path, agent: str, validator: Draft202012Validator, timeout_s: float
) -> ExampleResult:
    started = time.monotonic()

    def took() -> float:
        return round(time.monotonic() - started, 3)

    try:
        example = json.loads(await asyncio.to_thread(path.read_text))
    except (OSError, ValueError) as exc:
        return ExampleResult(name, False, took(), error=f"not a JSON file: {exc}")
    if not isinstance(example, dict):
        return ExampleResult(name, False, took(), error="an example is the agent's input: a JSON object")
    try:
        accepted = await api.submit(agent, {"input": example})
        view = await api.wait(accepted["run_id"], timeout=timeout_s)
    except ApiError as exc:
        return ExampleResult(name, False, took(), error=f"refused: {exc}")
    run_id, status = view["run_id"], view["status"]
    if status != "succeeded":
        return ExampleResult(name, False, took(), run_id, status, f"the run {status}: {view.get('error')}")
    errors = sorted(validator.iter_errors(view.get("result")), key=lambda e: list(e.absolute_path))
    if errors:
        said = "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(the output)'}: {e.message}"
                         for e in errors[:_MAX_ERRORS])  # fmt: skip
        return ExampleResult(name, False, took(), run_id, status, f"the output breaks its schema: {said}")
    return ExampleResult(name, True, took(), run_id, status)


async def run_stack_tests(stack: Stack, root: Path, pytest_args: tuple[str, ...]) -> TestsResult:
    """The package's ``tests/`` with pytest, pointed at the stack (see the module's docstring)."""
    env = {**os.environ, "PYTHONPATH": str(root), STACK_ENV: "1", "AF_API_URL": stack.api_url,
           "AF_API_TOKEN": stack.token, "AF_NATS_URL": stack.nats_url}  # fmt: skip
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests", *pytest_args, cwd=root, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await child.communicate()
    finally:
        if child.returncode is None:  # cancelled: never leave the run behind
            child.kill()
            await child.wait()
    text = output.decode(errors="replace").strip()
    code = child.returncode if child.returncode is not None else -1
    summary = text.splitlines()[-1].strip("= ") if text else ""
    return TestsResult(code == 0, code, round(time.monotonic() - started, 2), summary, text[-OUTPUT_TAIL:])

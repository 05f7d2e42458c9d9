"""``agent test --stack`` on real servers: a package made by ``agent create`` passes
(its example through the queue, its stack test against the API) and nothing it
started outlives the command; an output that breaks the schema and an input the
agent refuses (its Input model at submit, or its run) each fail the command with
their reason; a package that cannot be served is refused before any server starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.packaging.scaffold import TEMPLATES
from gateway.cli import cli
from mesh.embedded import pid_alive

# Refuses gallons in run; else returns what its Output model forbids (the runtime does not check).
BROKEN_RUN = """\
        if input.unit == "gallons":
            raise PermanentError("gallons are not supported: convert to litres")
        return Emissions.model_construct(kg_co2e="lots", unit=input.unit)
"""


@pytest.fixture(autouse=True)
def _own_pytest_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's pytest must not take this run's options (a --basetemp shared with it)."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


def _children() -> set[int]:
    """This process's live children (the servers and workers a stack starts are)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _create(tmp_path: Path, name: str, template: str = "deterministic") -> Path:
    made = CliRunner().invoke(cli, ["agent", "create", "--name", name, "--template", template,
                                    "--dir", str(tmp_path)])  # fmt: skip
    assert made.exit_code == 0, made.output
    return tmp_path / name


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_created_package_passes_on_a_real_stack_and_leaves_nothing_running(
    template: str, tmp_path: Path
) -> None:
    root = _create(tmp_path, f"stack-{template}", template)  # a module name of its own: imported here
    before = _children()
    result = CliRunner().invoke(cli, ["agent", "test", str(root), "--stack", "-o", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["error"] is None
    assert [(e["example"], e["passed"], e["status"]) for e in report["examples"]] == [
        ("examples/input.json", True, "succeeded")
    ]
    assert report["tests"]["passed"] and "3 passed" in report["tests"]["summary"]  # the stack test ran
    assert "token" not in report["stack"] and report["stack"]["stopped_s"] is not None
    assert {"nats-server", "postgres", "worker-0"} <= set(report["stack"]["pids"])
    assert not [pid for pid in report["stack"]["pids"].values() if pid_alive(pid)]
    assert _children() <= before
    assert "starting embedded nats-server" in result.stderr and "stopped." in result.stderr


def test_an_output_that_breaks_its_schema_and_an_input_the_agent_refuses_fail_with_their_reasons(
    tmp_path: Path,
) -> None:
    root = _create(tmp_path, "stack-broken")
    code = root / "stack_broken" / "agent.py"
    text = code.read_text().replace("        return Emissions(", BROKEN_RUN + "        return Emissions(")
    code.write_text(
        "from agents import PermanentError\n" + text.replace("from __future__ import annotations\n", "")
    )
    (root / "examples" / "negative.json").write_text('{"quantity": -1}')  # refused at submit, by Input
    (root / "examples" / "us.json").write_text('{"quantity": 3, "unit": "gallons"}')  # refused by run
    result = CliRunner().invoke(cli, ["agent", "test", str(root), "--stack"])
    assert result.exit_code == 1, result.output
    summary = result.stdout[result.stdout.index("stack-broken 0.1.0 on a stack: FAILED") :]
    lines = summary.splitlines()
    assert lines[1].startswith("  FAIL  examples/input.json") and lines[2].startswith(
        "  FAIL  examples/negative.json"
    ), summary
    assert "the output breaks its schema: kg_co2e: 'lots' is not of type 'number'" in lines[1]
    assert "refused: Invalid agent input (422): input does not match the schema of stack-broken" in lines[2]
    assert lines[3] == "    - quantity: Input should be greater than or equal to 0", summary
    assert lines[4].startswith("  FAIL  examples/us.json") and "the run failed: " in lines[4], summary
    assert lines[4].endswith("PermanentError: gallons are not supported: convert to litres"), summary
    assert "FAIL  tests" in summary and "failed" in summary  # test_it_runs sees "lots" too


def test_the_output_is_checked_against_the_schema_file_the_pack_declares(tmp_path: Path) -> None:
    root = _create(tmp_path, "stack-declared")
    schema = {"type": "object", "properties": {"kg_co2e": {"type": "number", "maximum": 100}}}
    (root / "schemas").mkdir()
    (root / "schemas" / "output.json").write_text(json.dumps(schema))
    spec = root / "agent.pack.yaml"
    spec.write_text(spec.read_text() + "output_schema: schemas/output.json\n")
    result = CliRunner().invoke(cli, ["agent", "test", str(root), "--stack", "-o", "json"])
    assert result.exit_code == 1, result.output
    [example] = json.loads(result.stdout)["examples"]
    assert example["status"] == "succeeded" and not example["passed"]
    assert (
        example["error"] == "the output breaks its schema: kg_co2e: 279.6 is greater than the maximum of 100"
    )


def test_a_package_whose_class_is_not_its_pack_file_is_refused_before_any_server_starts(
    tmp_path: Path,
) -> None:
    root = _create(tmp_path, "stack-mismatch")
    code = root / "stack_mismatch" / "agent.py"
    code.write_text(code.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    before = _children()
    result = CliRunner().invoke(cli, ["agent", "test", str(root), "--stack"])
    assert result.exit_code == 1
    assert "cannot serve the package:" in result.output
    assert "is stack-mismatch 0.2.0, but its agent.pack.yaml says stack-mismatch 0.1.0" in result.output
    assert "starting" not in result.output and _children() <= before
    result = CliRunner().invoke(cli, ["agent", "test", str(root), "--stack", "--confined"])
    assert result.exit_code == 1 and "not with --confined or --coverage" in result.output


def test_sigterm_while_it_runs_stops_the_stack_in_order_and_reports_the_interruption(tmp_path: Path) -> None:
    root = _create(tmp_path, "stack-interrupted")
    command = [sys.executable, "-m", "gateway.cli", "agent", "test", str(root), "--stack", "-o", "json"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
        assert child.stderr is not None
        for line in child.stderr:  # the stack is up: interrupt it
            if "stack up in" in line:
                child.send_signal(signal.SIGTERM)
                break
        out, err = child.communicate(timeout=60)
    assert child.returncode == 1, err
    report = json.loads(out)
    assert report["error"] == "interrupted (SIGTERM)" and not report["passed"]
    assert report["stack"]["stopped_s"] is not None and "stopped." in err  # in order, not by dying
    assert not [pid for pid in report["stack"]["pids"].values() if pid_alive(pid)]

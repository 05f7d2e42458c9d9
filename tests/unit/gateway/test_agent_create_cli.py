"""agent create makes a package whose own tests pass, in well under 5 s, for each template;
agent test runs them (plain, with coverage, and confined as the hub does), and a
package made this way packs and verifies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents.packaging import verify
from agents.packaging.scaffold import TEMPLATES
from agents.packaging.signing import TrustPolicy
from gateway.cli import cli


@pytest.fixture(autouse=True)
def _own_pytest_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """agent test's pytest must not take this run's options (a --basetemp shared with it)."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_makes_a_package_whose_tests_pass_and_that_packs(
    template: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AF_TEST_STACK", "1")  # left over in a shell: plain agent test has no stack
    started = time.monotonic()
    said = "Scope 3: what it does # here"
    code, out = _cli("agent", "create", "--name", f"my-{template}", "--template", template,
                     "--description", said, "--dir", str(tmp_path), "-o", "json")  # fmt: skip
    assert code == 0, out
    assert time.monotonic() - started < 5
    made = json.loads(out)
    root = Path(made["directory"])
    assert {"agent.pack.yaml", "README.md", "tests/test_agent.py", "examples/input.json"} <= set(
        made["files"]
    )
    code, _ = _cli("agent", "test", str(root))
    out = capfd.readouterr().out
    assert code == 0, out
    assert "2 passed, 1 skipped" in out  # the stack test runs under agent test --stack only
    code, out = _cli("agent", "pack", str(root), "--derive-schemas", "-f", str(tmp_path / "p.glpack"))
    assert code == 0, out
    checked = verify(tmp_path / "p.glpack", TrustPolicy())
    assert checked.spec.name == f"my-{template}" and checked.spec.type == template
    assert checked.spec.description == said
    assert {"schemas/input.json", "schemas/output.json"} <= set(checked.manifest.files)


def test_agent_test_says_when_a_test_fails_and_runs_coverage_and_confined(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert _cli("agent", "create", "--name", "cov-me", "--dir", str(tmp_path))[0] == 0
    root = tmp_path / "cov-me"
    code, _ = _cli("agent", "test", str(root), "--coverage")
    out = capfd.readouterr().out
    assert code == 0 and "cov_me/agent.py" in out and "TOTAL" in out, out
    code, out = _cli("agent", "test", str(root), "--confined")
    assert code == 0 and "2 passed" in out and "confined" in out, out
    test_file = root / "tests" / "test_agent.py"
    test_file.write_text(test_file.read_text().replace("== 279.6", "== 1.0"))
    code, _ = _cli("agent", "test", str(root))
    assert code == 1 and "1 failed" in capfd.readouterr().out
    code, out = _cli("agent", "test", str(root), "--confined")
    assert code == 1 and "own tests did not pass" in out


def test_create_refuses_a_bad_name_an_existing_directory_and_asks_only_on_a_terminal(tmp_path: Path) -> None:
    code, out = _cli("agent", "create", "--name", "Bad_Name", "--dir", str(tmp_path))
    assert code == 1 and "cannot name an agent" in out and "Traceback" not in out
    assert _cli("agent", "create", "--name", "twice", "--dir", str(tmp_path))[0] == 0
    code, out = _cli("agent", "create", "--name", "twice", "--dir", str(tmp_path))
    assert code == 1 and "exists already" in out
    code, out = _cli("agent", "create", "--dir", str(tmp_path))  # CliRunner's stdin is no terminal
    assert code == 1 and "give --name" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twice"]  # nothing half-made

"""A small agent directory to pack."""

from __future__ import annotations

from pathlib import Path

import pytest

PACK_YAML = """\
spec_version: 1
name: scope2-electricity
version: 1.4.0
type: deterministic
entry_point: scope2.agent:PurchasedElectricity
input_schema: schemas/input.json
"""


def write_tree(root: Path, version: str = "1.4.0") -> Path:
    (root / "scope2").mkdir(parents=True)
    (root / "schemas").mkdir()
    (root / "tests").mkdir()
    (root / "agent.pack.yaml").write_text(PACK_YAML.replace("1.4.0", version))
    (root / "scope2" / "__init__.py").write_text("")
    (root / "scope2" / "agent.py").write_text("FACTOR = 0.233  # kg CO2e per kWh\n")
    (root / "schemas" / "input.json").write_text('{"type": "object"}\n')
    (root / "tests" / "test_agent.py").write_text("def test_factor():\n    assert True\n")
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o750)
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src")

"""The alert rules: valid for Prometheus, each with a summary, a runbook section in
docs/operations.md and a ``promtool test rules`` case that makes it fire.

promtool comes with Debian's ``prometheus`` package (``apt-get install -y
prometheus``); without it the promtool tests skip and the rest still run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
ALERTS = ROOT / "deployment" / "monitoring" / "alerts"
RULES = ALERTS / "agent-factory-alerts.yaml"
RULE_TESTS = ALERTS / "agent-factory-alerts.test.yaml"
RUNBOOKS = ROOT / "docs" / "operations.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool: apt-get install -y prometheus")


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=ALERTS, capture_output=True, text=True, timeout=60)


def test_there_are_at_least_fifteen_alerts_each_with_a_summary_and_a_runbook_section() -> None:
    alerts = _alerts()
    assert len(alerts) >= 15
    headings = set(re.findall(r"^### (\w+)$", RUNBOOKS.read_text(), flags=re.M))
    for rule in alerts:
        name = rule["alert"]
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{name.lower()}"
        assert name in headings, f"no runbook section '### {name}' in docs/operations.md"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}


def test_every_alert_has_a_promtool_case_that_fires_it() -> None:
    firing = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in _alerts()} - firing == set()


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr

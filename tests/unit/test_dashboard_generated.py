"""The committed dashboard JSON is what ``deployment/monitoring/dashboard.py`` generates."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

GENERATOR = Path(__file__).parents[2] / "deployment" / "monitoring" / "dashboard.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("af_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboard_json_is_what_the_code_generates() -> None:
    generator = _generator()
    assert generator.OUTPUT.read_text() == generator.render(), "stale dashboard JSON: run `make dashboards`"


def test_dashboard_has_rows_of_at_least_twenty_panels_and_agent_and_tenant_variables() -> None:
    board = json.loads(_generator().OUTPUT.read_text())
    panels = [p for p in board["panels"] if p["type"] != "row"]
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert len(panels) >= 20 and len(rows) >= 6
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    assert {v["name"] for v in board["templating"]["list"]} >= {"agent", "tenant"}


def test_the_task_latency_panels_show_exemplars() -> None:
    board = json.loads(_generator().OUTPUT.read_text())
    targets = [t for p in board["panels"] for t in p.get("targets", [])]
    latency = [
        t for t in targets if "af_task_run_seconds_bucket" in t["expr"] or "af_task_wait_seconds" in t["expr"]
    ]
    assert latency and all(t["exemplar"] for t in latency)
    assert not any(t["exemplar"] for t in targets if t not in latency)

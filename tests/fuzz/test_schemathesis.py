"""Schemathesis over every operation of ``GET /api/v1/openapi.json``, against the gateway
served on real NATS and PostgreSQL: no answer is a 5xx, every error is problem+json
(``problem_checks.py``), and every answer fits what the document says of its route
(status, content type, body schema).

Slow (minutes), so not in CI's suite: ``make fuzz`` runs it. ``AF_FUZZ_EXAMPLES`` sets
the cases per operation and phase (default 300), ``AF_FUZZ_SEED`` the seed (24),
``AF_FUZZ_CHECKS`` other checks (``all`` shows what else schemathesis would say).
Schemathesis prints its report, with the count of generated cases.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.api.docs import OPENAPI_PATH
from tests.integration.gateway.conftest import TOKEN

HERE = Path(__file__).parent
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "errors_are_problems",
)


def _command(url: str, report: Path) -> list[str]:
    cli = Path(sys.executable).with_name("schemathesis")
    checks = os.environ.get("AF_FUZZ_CHECKS") or ",".join(CHECKS)
    return [
        str(cli), "--no-color", "--config-file", str(HERE / "schemathesis.toml"), "run", url,
        "--header", f"Authorization: Bearer {TOKEN}", "--checks", checks,
        "--max-examples", os.environ.get("AF_FUZZ_EXAMPLES", "300"),
        "--seed", os.environ.get("AF_FUZZ_SEED", "24"),
        "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all",
        # One worker: hypothesis describing strategies in parallel threads trips a CPython
        # 3.11 ast bug ("AST constructor recursion depth mismatch").
        "--workers", "1",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("api", [{"api_rate_per_s": 0}], indirect=True)  # one fast caller, unlimited
async def test_schemathesis_finds_no_server_error_and_only_documented_problem_answers(
    api: TestClient[Any, Any], tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        *_command(str(api.make_url(OPENAPI_PATH)), report),
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.problem_checks", "PYTHONPATH": os.getcwd()},
    )
    rc = await proc.wait()  # the gateway answers on this loop meanwhile
    summary = json.loads(report.read_text()) if report.exists() else {}
    print(json.dumps({k: summary.get(k) for k in ("operations", "test_cases", "failures", "running_time")}))
    assert rc == 0, "schemathesis found failures (its report is above)"

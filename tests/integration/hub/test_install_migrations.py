"""Migration hooks of installed versions, run by the lifecycle with real worker
processes: ``up`` when a version is deployed over a live one (a failing one
fails the deploy before any of its workers start), ``down`` when the live
version is rolled back to an earlier one (a failing one changes nothing)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from agents.packaging import pack_bytes
from gateway.app import Gateway
from tests.helpers import unique
from tests.integration.gateway.conftest import follow
from tests.integration.hub.installing import act, install, publish, runs

AGENT = """
import os
from pathlib import Path

from pydantic import BaseModel

from agents.contract import Agent, RunContext


class In(BaseModel):
    kwh: float


class Out(BaseModel):
    version: str


class Meter(Agent[In, Out]):
    key = "{name}"
    version = "{version}"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(version=self.version)


def up(old, new):
    {up}
    Path(os.environ["AF_TEST_MARKS"], f"up {{old}} {{new}}").touch()


async def down(old, new):
    {down}
    Path(os.environ["AF_TEST_MARKS"], f"down {{old}} {{new}}").touch()
"""


_HOOKS = {"up": "meter_mig.agent:up", "down": "meter_mig.agent:down", "timeout_s": 30}


def _ran(marks: Path) -> list[str]:
    return sorted(p.name for p in marks.iterdir())


def _archive(root: Path, name: str, version: str, *, up: str = "pass", down: str = "pass") -> bytes:
    tree = root / f"{name}-{version}"
    (tree / "meter_mig").mkdir(parents=True)
    (tree / "meter_mig" / "__init__.py").write_text("")
    (tree / "meter_mig" / "agent.py").write_text(AGENT.format(name=name, version=version, up=up, down=down))
    (tree / "agent.pack.yaml").write_text(textwrap.dedent(f"""\
        spec_version: 1
        name: {name}
        version: {version}
        type: deterministic
        entry_point: meter_mig.agent:Meter
        migrations: {json.dumps(_HOOKS)}
        """))  # fmt: skip
    data, _ = pack_bytes(tree)
    return data


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the hooks say they ran (they inherit the gateway's environment)."""
    where = tmp_path / "marks"
    where.mkdir()
    monkeypatch.setenv("AF_TEST_MARKS", str(where))
    return where


async def _rollback(api: TestClient[Any, Any], name: str, to: str) -> dict[str, Any]:
    body = {"action": "rollback", "version": to}
    return await follow(api, await api.post(f"/api/v1/agents/{name}/lifecycle", json=body), timeout=60)


async def test_up_runs_at_each_deploy_over_a_live_version_and_down_at_a_rollback(
    platform: tuple[Gateway, TestClient[Any, Any]], marks: Path, tmp_path: Path
) -> None:
    gateway, api = platform
    name = unique("mig").replace("_", "-")
    for version in ("1.0.0", "2.0.0"):
        await publish(gateway, _archive(tmp_path, name, version), name, version)
        done = await install(api, name=name, version=version, deploy=True)
        assert done["status"] == "succeeded", done
    assert _ran(marks) == ["up 1.0.0 2.0.0", "up None 1.0.0"]

    back = await _rollback(api, name, "1.0.0")
    assert back["status"] == "succeeded", back
    assert "rolled back from 2.0.0 (retired)" in back["result"]["detail"]
    assert _ran(marks) == ["down 2.0.0 1.0.0", "up 1.0.0 2.0.0", "up None 1.0.0"]
    ran = await runs(api, name, 4)
    assert {v["result"]["version"] for v in ran} == {"1.0.0"}
    health = await (await api.get(f"/api/v1/agents/{name}/health")).json()
    assert {v["version"]: v["state"] for v in health["versions"]} == {"1.0.0": "running", "2.0.0": "retired"}
    assert {w["version"] for w in health["workers"] if w["role"] == "dedicated"} == {"1.0.0"}
    assert (await act(api, name, "retire", "1.0.0"))["result"]["state"] == "retired"


async def test_a_failing_hook_fails_its_step_and_leaves_the_live_version_running(
    platform: tuple[Gateway, TestClient[Any, Any]], marks: Path, tmp_path: Path
) -> None:
    gateway, api = platform
    name = unique("mig").replace("_", "-")
    await publish(gateway, _archive(tmp_path, name, "1.0.0"), name, "1.0.0")
    await publish(gateway, _archive(tmp_path, name, "2.0.0", up="raise RuntimeError('the table is locked')"),
                  name, "2.0.0")  # fmt: skip
    await publish(
        gateway, _archive(tmp_path, name, "3.0.0", down="raise SystemExit('no way down')"), name, "3.0.0"
    )
    assert (await install(api, name=name, version="1.0.0", deploy=True))["status"] == "succeeded"

    broken = await install(api, name=name, version="2.0.0", deploy=True)
    assert broken["status"] == "failed" and "the table is locked" in broken["error"], broken
    assert gateway.dedicated is not None and gateway.dedicated.pids(f"{name}@2.0.0") == []

    assert (await install(api, name=name, version="3.0.0", deploy=True))["status"] == "succeeded"
    stuck = await _rollback(api, name, "1.0.0")
    assert stuck["status"] == "failed" and "no way down" in stuck["error"], stuck
    health = await (await api.get(f"/api/v1/agents/{name}/health")).json()
    states = {v["version"]: v["state"] for v in health["versions"]}
    assert states == {"1.0.0": "running", "2.0.0": "failed", "3.0.0": "running"}
    for version in ("1.0.0", "3.0.0"):
        assert (await act(api, name, "retire", version))["result"]["state"] == "retired"

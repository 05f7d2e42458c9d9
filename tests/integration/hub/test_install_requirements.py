"""A pack's Python requirements, installed into an environment of its own: served
from a local package index (pip's own ``PIP_FIND_LINKS``, as a mirror of the
registry would be), imported by the installed version's workers and never
installed into the platform's environment; a requirement that conflicts with a
package the platform runs on, directly or further down, is refused before
anything is installed."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import textwrap
import zipfile
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
from pydantic import BaseModel

import tinydep
from agents.contract import Agent, RunContext


class In(BaseModel):
    kwh: float


class Out(BaseModel):
    kg: float
    where: str


class Meter(Agent[In, Out]):
    key = "{name}"
    version = "1.0.0"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(kg=input.kwh * tinydep.FACTOR, where=tinydep.__file__)
"""


def _wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel of module ``name`` (``FACTOR = 0.25``), written into ``index``."""
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}/__init__.py": b"FACTOR = 0.25\n",
        f"{dist}/METADATA": metadata.encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{dist}/RECORD"] = ("\n".join([*record, f"{dist}/RECORD,,"]) + "\n").encode()
    index.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(index / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _archive(root: Path, name: str, requirements: list[str], test: str | None = None) -> bytes:
    tree = root / name
    if test is not None:
        (tree / "tests").mkdir(parents=True)
        (tree / "tests" / "test_it.py").write_text(test)
    (tree / "meter_req").mkdir(parents=True)
    (tree / "meter_req" / "__init__.py").write_text("")
    (tree / "meter_req" / "agent.py").write_text(AGENT.format(name=name))
    (tree / "agent.pack.yaml").write_text(textwrap.dedent(f"""\
        spec_version: 1
        name: {name}
        version: 1.0.0
        type: deterministic
        entry_point: meter_req.agent:Meter
        requirements: {json.dumps(requirements)}
        """))  # fmt: skip
    data, _ = pack_bytes(tree)
    return data


@pytest.fixture
def index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local package index pip reads instead of the registry (no network here)."""
    where = tmp_path / "index"
    _wheel(where, "tinydep", "1.0.0")
    _wheel(where, "tinybad", "1.0.0", requires=("pydantic<2",))
    _wheel(where, "pydantic", "1.10.0")  # what tinybad wants, to be had: only the platform's check stops it
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(where))
    return where


async def test_requirements_are_installed_beside_the_package_and_imported_by_its_workers(
    platform: tuple[Gateway, TestClient[Any, Any]],
    index: Path,
    tmp_path: Path,
) -> None:
    gateway, api = platform
    name = unique("req").replace("_", "-")
    await publish(gateway, _archive(tmp_path, name, ["tinydep>=1,<2"]), name, "1.0.0")
    done = await install(api, name=name, deploy=True)
    assert done["status"] == "succeeded", done
    environment = gateway.settings.data_dir.resolve() / "packages" / name / "1.0.0.env"
    ran = await runs(api, name, 2)
    assert all(v["result"]["where"].startswith(str(environment)) for v in ran), ran
    assert ran[1]["result"]["kg"] == 0.25
    assert importlib.util.find_spec("tinydep") is None  # never in the platform's environment
    assert (await act(api, name, "retire", "1.0.0"))["result"]["state"] == "retired"


async def test_requirements_that_conflict_with_the_platform_are_refused_before_installing(
    platform: tuple[Gateway, TestClient[Any, Any]],
    index: Path,
    tmp_path: Path,
) -> None:
    gateway, api = platform
    direct, deeper = unique("direct").replace("_", "-"), unique("deeper").replace("_", "-")
    await publish(gateway, _archive(tmp_path, direct, ["pydantic<2"]), direct, "1.0.0")
    await publish(gateway, _archive(tmp_path, deeper, ["tinybad"]), deeper, "1.0.0")
    refused = await install(api, name=direct)
    assert refused["status"] == "failed", refused
    assert (
        "conflict with the platform" in refused["error"]
        and "the platform runs pydantic 2." in refused["error"]
    )
    further = await install(api, name=deeper)
    assert further["status"] == "failed" and "pydantic" in further["error"], further
    for name in (direct, deeper):
        assert (await (await api.get(f"/api/v1/hub/installs?agent={name}")).json())["installed"] == []
        assert not (gateway.settings.data_dir.resolve() / "packages" / name / "1.0.0.env").exists()


async def test_a_package_with_requirements_is_published_after_its_tests_ran_with_them(
    platform: tuple[Gateway, TestClient[Any, Any]], index: Path, tmp_path: Path
) -> None:
    _, api = platform
    name = unique("pubreq").replace("_", "-")
    test = "import tinydep\n\n\ndef test_it_has_its_factor():\n    assert tinydep.FACTOR == 0.25\n"
    resp = await api.post("/api/v1/hub/packages", data=_archive(tmp_path, name, ["tinydep"], test),
                          headers={"Content-Type": "application/gzip"})  # fmt: skip
    op = await follow(api, resp, timeout=120)
    assert op["status"] == "succeeded", op
    assert op["result"]["manifest"]["tests"]["summary"].startswith("1 passed")

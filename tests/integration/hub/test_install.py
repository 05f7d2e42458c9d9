"""Installing hub packages into a running platform, on the real servers and with
real worker processes: an installed version runs on dedicated workers of its
own, started in its extracted directory, and a second installed version takes
over once the first retires; input is checked against the pack's schema at the
API; installing is idempotent, a version is immutable, a version the platform
loads from its own code is not replaced, a missing directory is extracted again,
and a package whose archive changed in the store is refused."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.hub import Hub
from agents.packaging import pack_bytes
from agents.registry import load_agent
from gateway.app import Gateway
from mesh import names
from mesh.blobs import delete_blob, put_blob
from mesh.embedded import pid_alive
from tests.helpers import eventually, unique
from tests.integration.gateway.conftest import follow, served
from tests.integration.hub.installing import act, gateway_for, install, publish, runs

AGENT = """
from pydantic import BaseModel

from agents.contract import Agent, RunContext


class In(BaseModel):
    kwh: float


class Out(BaseModel):
    kg: float
    version: str
    where: str


class Meter(Agent[In, Out]):
    key = "{name}"
    version = "{version}"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(kg=input.kwh * {factor}, version=self.version, where=__file__)
"""


def _archive(root: Path, name: str, version: str, factor: float, deps: dict[str, str] | None = None) -> bytes:
    """A package of an agent that says its version and where its code is."""
    tree = root / f"{name}-{version}"
    module = tree / "meter_pkg"
    module.mkdir(parents=True)
    (module / "__init__.py").write_text("")
    (module / "agent.py").write_text(AGENT.format(name=name, version=version, factor=factor))
    (tree / "schemas").mkdir()
    schema = {"type": "object", "properties": {"kwh": {"type": "number", "minimum": 0}}, "required": ["kwh"]}
    (tree / "schemas" / "input.json").write_text(json.dumps(schema))
    (tree / "schemas" / "output.json").write_text(json.dumps({"type": "object"}))
    (tree / "agent.pack.yaml").write_text(textwrap.dedent(f"""\
        spec_version: 1
        name: {name}
        version: {version}
        description: kWh to kg, version {version}
        type: deterministic
        entry_point: meter_pkg.agent:Meter
        input_schema: schemas/input.json
        output_schema: schemas/output.json
        dependencies: {json.dumps(deps or {})}
        """))  # fmt: skip
    data, _ = pack_bytes(tree)
    return data


async def test_an_installed_version_runs_in_its_own_workers_and_a_second_one_takes_over(
    platform: tuple[Gateway, TestClient[Any, Any]], tmp_path: Path
) -> None:
    gateway, api = platform
    name = unique("meter").replace("_", "-")
    await publish(gateway, _archive(tmp_path, name, "1.0.0", 2.0), name, "1.0.0")
    await publish(gateway, _archive(tmp_path, name, "2.0.0", 3.0), name, "2.0.0")
    root = gateway.settings.data_dir.resolve() / "packages" / name

    first = await install(api, name=name, version="1.0.0", deploy=True)
    assert first["status"] == "succeeded", first
    assert [(d["agent"], d["state"]) for d in first["result"]["deploy"]] == [(name, "running")]
    ran = await runs(api, name, 6)
    assert {(v["result"]["version"], v["result"]["kg"]) for v in ran} >= {("1.0.0", 2.0)}
    assert all(v["result"]["where"].startswith(str(root / "1.0.0")) for v in ran)
    assert {v["worker"].split("@")[0] for v in ran} == {f"dedicated-{name}-1.0.0-0"}

    # The API checks input against the installed version's schema, before the queue.
    bad = await api.post(f"/api/v1/agents/{name}/runs", json={"input": {"kwh": -1}})
    assert bad.status == 422 and "minimum" in await bad.text()

    # No version named: the highest one not yanked.
    second = await install(api, name=name, deploy=True)
    assert second["status"] == "succeeded", second
    assert second["result"]["installed"]["version"] == "2.0.0"
    health = await (await api.get(f"/api/v1/agents/{name}/health")).json()
    own = {w["version"] for w in health["workers"] if w["role"] == "dedicated"}
    assert own == {"1.0.0", "2.0.0"}, health  # two versions, each on its own workers

    retired = await act(api, name, "retire", "1.0.0")
    assert retired["result"]["state"] == "retired", retired
    ran = await runs(api, name, 6)
    assert {v["result"]["version"] for v in ran} == {"2.0.0"}
    assert all(v["result"]["where"].startswith(str(root / "2.0.0")) for v in ran)
    assert all(v["result"]["kg"] == 3.0 * v["input"]["kwh"] for v in ran)

    listed = await (await api.get(f"/api/v1/hub/installs?agent={name}")).json()
    assert sorted(r["version"] for r in listed["installed"]) == ["1.0.0", "2.0.0"]
    assert (await act(api, name, "retire", "2.0.0"))["result"]["state"] == "retired"


async def test_installing_again_is_a_no_op_and_a_missing_directory_is_extracted_again(
    platform: tuple[Gateway, TestClient[Any, Any]], tmp_path: Path
) -> None:
    gateway, api = platform
    name = unique("meter").replace("_", "-")
    await publish(gateway, _archive(tmp_path, name, "1.0.0", 2.0), name, "1.0.0")
    once = await install(api, name=name, version="1.0.0")
    again = await install(api, name=name, version="1.0.0")
    assert once["status"] == again["status"] == "succeeded", (once, again)
    assert once["result"]["installed"] == again["result"]["installed"]
    versions = await (await api.get(f"/api/v1/agents/{name}/health")).json()
    assert [(v["version"], v["state"], v["mode"]) for v in versions["versions"]] == [
        ("1.0.0", "created", "dedicated")
    ]

    where = gateway.settings.data_dir.resolve() / "packages" / name / "1.0.0"
    shutil.rmtree(where)  # a wiped data dir, or another host's gateway deploying it
    deployed = await act(api, name, "deploy", "1.0.0")
    assert deployed["result"]["state"] == "running", deployed
    assert (where / "agent.pack.yaml").is_file()
    ran = await runs(api, name, 2)
    assert {v["result"]["version"] for v in ran} == {"1.0.0"}

    retired = await act(api, name, "retire", "1.0.0")
    assert retired["result"]["state"] == "retired"
    pids = [p for p in (gateway.dedicated.pids(f"{name}@1.0.0") if gateway.dedicated else [])]
    assert not any(pid_alive(pid) for pid in pids)


async def test_a_restarted_gateway_starts_an_installed_versions_workers_again(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    name = unique("meter").replace("_", "-")
    first = gateway_for(tmp_path)
    async with served(first, nc, database_url) as api:
        await publish(first, _archive(tmp_path, name, "1.0.0", 2.0), name, "1.0.0")
        installed = await install(api, name=name, deploy=True)
        assert installed["status"] == "succeeded", installed
        assert first.dedicated is not None
        [pid] = first.dedicated.pids(f"{name}@1.0.0")
    await eventually(lambda: not pid_alive(pid), 10, "its worker stopped with its gateway")

    again = gateway_for(tmp_path)
    async with served(again, nc, database_url) as api:
        # Its runs wait in the queue until the new gateway's workers for it answer.
        ran = await runs(api, name, 3)
        assert {v["result"]["version"] for v in ran} == {"1.0.0"}
        assert again.dedicated is not None and again.dedicated.pids(f"{name}@1.0.0") != [pid]
        health = await (await api.get(f"/api/v1/agents/{name}/health")).json()
        assert [v["state"] for v in health["versions"]] == ["running"]
        assert (await act(api, name, "retire", "1.0.0"))["result"]["state"] == "retired"


async def test_an_install_installs_and_deploys_what_it_depends_on_first(
    platform: tuple[Gateway, TestClient[Any, Any]], tmp_path: Path
) -> None:
    gateway, api = platform
    base, top, odd = (unique(n).replace("_", "-") for n in ("base", "top", "odd"))
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        await publish(gateway, _archive(tmp_path, base, version, 1.0), base, version)
    await publish(gateway, _archive(tmp_path, top, "1.0.0", 2.0, {base: "^1.0"}), top, "1.0.0")
    done = await install(api, name=top, deploy=True)
    assert done["status"] == "succeeded", done
    # The highest base in ^1.0, installed and deployed before the package that needs it.
    assert [(d["agent"], d["version"]) for d in done["result"]["dependencies"]] == [(base, "1.1.0")]
    deployed = [(out["agent"], out["version"], out["state"]) for out in done["result"]["deploy"]]
    assert deployed == [(base, "1.1.0", "running"), (top, "1.0.0", "running")]
    ran = await runs(api, base, 1)
    assert ran[0]["result"]["version"] == "1.1.0"

    # Its dependency can not be resolved: refused with the chain, nothing of it registered.
    await publish(gateway, _archive(tmp_path, odd, "1.0.0", 2.0, {base: "^3.0"}), odd, "1.0.0")
    refused = await install(api, name=odd)
    assert refused["status"] == "failed" and base in refused["error"] and "^3.0" in refused["error"], refused
    assert (await (await api.get(f"/api/v1/hub/installs?agent={odd}")).json())["installed"] == []
    for agent, version in ((top, "1.0.0"), (base, "1.1.0")):
        assert (await act(api, agent, "retire", version))["result"]["state"] == "retired"


async def test_refusals_say_why(
    platform: tuple[Gateway, TestClient[Any, Any]], tmp_path: Path, mesh_js: JetStreamContext
) -> None:
    gateway, api = platform
    # A version the platform runs from its own code is not replaced by a package.
    await follow(api, await api.post("/api/v1/agents/noop/lifecycle", json={"action": "deploy"}))
    noop = load_agent("agents.examples:NoOp")
    await publish(gateway, _archive(tmp_path, "noop", noop.version, 1.0), "noop", noop.version)
    own = await install(api, name="noop", version=noop.version)
    assert own["status"] == "failed" and "from code this platform loads" in own["error"], own

    # Nothing of that name, or of that version.
    missing = await install(api, name=unique("nothing").replace("_", "-"))
    assert missing["status"] == "failed" and "no version" in missing["error"], missing

    # The archive in the store is not the one indexed: refused before anything is extracted.
    name = unique("meter").replace("_", "-")
    await publish(gateway, _archive(tmp_path, name, "1.0.0", 2.0), name, "1.0.0")
    assert gateway.pool is not None
    package = await Hub(gateway.pool, nc_of(gateway), mesh_js).get(name, "1.0.0", tenant=None)
    await delete_blob(mesh_js, names.OBJECTS_PACKAGES, package.object)
    await put_blob(
        mesh_js, names.OBJECTS_PACKAGES, package.object, _archive(tmp_path / "x", name, "1.0.0", 9.0)
    )
    swapped = await install(api, name=name, version="1.0.0")
    assert swapped["status"] == "failed" and "sha" in swapped["error"].lower(), swapped
    assert not (gateway.settings.data_dir.resolve() / "packages" / name).exists()

    # A tenant's token may not install code into the platform.
    body = {"name": name}
    tenant_token = await _tenant_token(api)
    refused = await api.post(
        "/api/v1/hub/installs", json=body, headers={"Authorization": f"Bearer {tenant_token}"}
    )
    assert refused.status == 403


def nc_of(gateway: Gateway) -> Client:
    assert gateway.nc is not None
    return gateway.nc


async def _tenant_token(api: TestClient[Any, Any]) -> str:
    tenant = unique("acme").replace("_", "-")
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status in (200, 201)
    made = await api.post("/api/v1/tokens", json={"name": "t", "scope": "admin", "tenant": tenant})
    assert made.status in (200, 201), await made.text()
    return str((await made.json())["secret"])

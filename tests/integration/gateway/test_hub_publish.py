"""Publishing through the API, on the real servers: a package is accepted only after its
archive, its signature policy, its version and schemas against the version before, and
its own tests (run confined) pass; each refusal ends the operation with the reason and
leaves nothing staged; the accepted one is found and downloaded byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from agents.packaging import TrustPolicies, TrustPolicy, keygen, load_private_key, load_public_key, pack_bytes
from mesh import names
from tests.helpers import eventually, unique
from tests.integration.gateway.conftest import PROBLEM, agent_factory, ok

_KEYS = Path(tempfile.mkdtemp(prefix="af-hub-keys-"))
_PRIVATE, _PUBLIC = keygen(_KEYS / "release.key")
_POLICY_FILE = _KEYS / "policy.json"
_POLICY_FILE.write_text(
    TrustPolicies(
        default=TrustPolicy.of([load_public_key(_PUBLIC)], require_signature=True)
    ).model_dump_json()
)

AGENT = """
from pydantic import BaseModel

from agents.contract import Agent, RunContext


class In(BaseModel):
    kwh: float


class Out(BaseModel):
    kg: float
    {extra}


class Electricity(Agent[In, Out]):
    key = "{name}"
    version = "{version}"
    Input, Output = In, Out

    async def run(self, input: In, ctx: RunContext) -> Out:
        return Out(kg=input.kwh * 0.233{extra_value})
"""

TEST = """
import asyncio

from {module}.agent import Electricity, In


def test_it_converts():
    out = asyncio.run(Electricity().run(In(kwh=10), None))
    assert {check}
"""


def _tree(root: Path, name: str, version: str, *, with_co2: bool = True, passing: bool = True,
          padding: int = 0) -> Path:  # fmt: skip
    """A package directory: an agent whose output has ``kg`` (and ``co2`` when asked),
    its schemas, and a test that passes (or fails)."""
    module = name.replace("-", "_")
    (root / module).mkdir(parents=True)
    (root / "schemas").mkdir()
    (root / "tests").mkdir()
    (root / module / "__init__.py").write_text("")
    extra, extra_value = ("co2: float", ", co2=1.0") if with_co2 else ("", "")
    (root / module / "agent.py").write_text(AGENT.format(name=name, version=version, extra=extra,
                                                         extra_value=extra_value))  # fmt: skip
    output = {"type": "object", "properties": {"kg": {"type": "number"}}, "required": ["kg"]}
    if with_co2:
        output["properties"]["co2"] = {"type": "number"}  # type: ignore[index]
        output["required"].append("co2")  # type: ignore[attr-defined]
    (root / "schemas" / "input.json").write_text(json.dumps({
        "type": "object", "properties": {"kwh": {"type": "number"}}, "required": ["kwh"]}))  # fmt: skip
    (root / "schemas" / "output.json").write_text(json.dumps(output))
    (root / "tests" / "test_agent.py").write_text(
        TEST.format(module=module, check="out.kg == 2.33" if passing else "out.kg == 0")
    )
    if padding:
        (root / module / "factors.bin").write_bytes(os.urandom(padding))
    (root / "agent.pack.yaml").write_text(textwrap.dedent(f"""\
        spec_version: 1
        name: {name}
        version: {version}
        description: Emissions of purchased electricity
        type: deterministic
        entry_point: {module}.agent:Electricity
        input_schema: schemas/input.json
        output_schema: schemas/output.json
        metadata:
          tags: [ghg, scope-2]
        """))  # fmt: skip
    return root


def _archive(tmp: Path, name: str, version: str, *, signed: bool = True, **tree: Any) -> bytes:
    key = load_private_key(_PRIVATE) if signed else None
    data, _ = pack_bytes(_tree(tmp / f"{name}-{version}-{os.urandom(3).hex()}", name, version, **tree),
                         signing_key=key)  # fmt: skip
    return data


async def _publish(api: TestClient[Any, Any], archive: bytes, headers: dict[str, str] | None = None,
                   query: str = "") -> dict[str, Any]:  # fmt: skip
    """POST the archive; the operation once it ended."""
    resp = await api.post(f"/api/v1/hub/packages{query}", data=archive, headers={
        "Content-Type": "application/gzip", **(headers or {})})  # fmt: skip
    assert resp.status == 202, await resp.text()
    op_id = (await resp.json())["id"]

    async def ended() -> dict[str, Any] | None:
        op: dict[str, Any] = await (await api.get(f"/api/v1/operations/{op_id}", headers=headers)).json()
        return op if op["status"] in ("succeeded", "failed", "cancelled") else None

    return await eventually(ended, 60, f"publish operation {op_id} ended")


async def _staged(js: JetStreamContext, *archives: bytes) -> set[str]:
    """Which of ``archives`` are still staged (other tests' publishes are theirs)."""
    store = await js.object_store(names.OBJECTS_PACKAGES)
    try:
        objects = {o.name for o in await store.list(ignore_deletes=True)}
    except Exception:  # nats-py: an empty store raises
        return set()
    wanted = {f"staging/{hashlib.sha256(a).hexdigest()}.glpack" for a in archives}
    return objects & wanted


policy = pytest.mark.parametrize("api", [{"trust_policy_file": str(_POLICY_FILE)}], indirect=True)


@policy
async def test_a_package_passes_its_checks_is_indexed_and_downloads_byte_for_byte(
    api: TestClient[Any, Any], mesh_js: JetStreamContext, tmp_path: Path
) -> None:
    name = unique("grid").replace("_", "-")
    archive = _archive(tmp_path, name, "1.0.0", padding=200_000)  # past the JSON body limit
    op = await _publish(api, archive)
    assert op["status"] == "succeeded", op
    package = op["result"]
    # a token of every tenant publishes public packages
    assert (package["name"], package["version"], package["tenant"]) == (name, "1.0.0", None)
    assert package["signature_key"] and package["tags"] == ["ghg", "scope-2"]
    assert package["manifest"]["tests"]["summary"].startswith("1 passed")
    found = await (await api.get(f"/api/v1/hub/packages?q={name}")).json()
    assert [(p["name"], p["version"]) for p in found["packages"]] == [(name, "1.0.0")]
    resp = await api.get(f"/api/v1/hub/packages/{name}/1.0.0/archive")
    assert resp.status == 200 and await resp.read() == archive
    assert await _staged(mesh_js, archive) == set()

    # the same version again: refused, the first stays
    sent = [_archive(tmp_path, name, "1.0.0"), _archive(tmp_path, name, "1.1.0", with_co2=False),
            _archive(tmp_path, name, "2.0.0", with_co2=False)]  # fmt: skip
    again = await _publish(api, sent[0])
    assert again["status"] == "failed" and "already" in again["error"], again
    # a minor version that drops an output field: a break without a major bump
    broken = await _publish(api, sent[1])
    assert broken["status"] == "failed" and "needs a major bump" in broken["error"], broken
    assert "output /co2" in broken["error"]
    # the same change as a major version is accepted
    major = await _publish(api, sent[2])
    assert major["status"] == "succeeded", major
    assert await _staged(mesh_js, *sent) == set()


@policy
async def test_refusals_say_why_and_leave_nothing_staged(
    api: TestClient[Any, Any], mesh_js: JetStreamContext, tmp_path: Path
) -> None:
    name = unique("heat").replace("_", "-")
    tampered = bytearray(_archive(tmp_path, name, "1.0.0"))
    tampered[len(tampered) // 2] ^= 0xFF
    sent = [_archive(tmp_path, name, "1.0.0", passing=False), _archive(tmp_path, name, "1.0.0", signed=False),
            b"not a package at all", bytes(tampered)]  # fmt: skip
    failing = await _publish(api, sent[0])
    assert failing["status"] == "failed" and "own tests did not pass" in failing["error"], failing
    assert "assert" in failing["error"]  # pytest's own words
    unsigned = await _publish(api, sent[1])
    assert unsigned["status"] == "failed" and "signature" in unsigned["error"], unsigned
    garbage = await _publish(api, sent[2])
    assert garbage["status"] == "failed", garbage
    hurt = await _publish(api, sent[3])
    assert hurt["status"] == "failed", hurt
    assert await _staged(mesh_js, *sent) == set()
    assert (await api.get(f"/api/v1/hub/packages/{name}")).status == 404  # nothing was indexed


async def test_publish_requests_refused_at_once(api: TestClient[Any, Any], tmp_path: Path) -> None:
    tenant = unique("acme")
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status == 201
    resp = await api.post("/api/v1/tokens", json={"scope": "operator", "name": "op", "tenant": tenant})
    as_tenant = {"Authorization": f"Bearer {(await resp.json())['secret']}"}
    archive = _archive(tmp_path, unique("x").replace("_", "-"), "1.0.0", signed=False)
    resp = await api.post("/api/v1/hub/packages?public=true", data=archive, headers=as_tenant)
    assert resp.status == 403 and resp.content_type == PROBLEM
    resp = await api.post("/api/v1/hub/packages", data=b"")
    assert resp.status == 422 and resp.content_type == PROBLEM
    resp = await api.post("/api/v1/hub/packages", json={"archive": "base64…"})
    assert resp.status == 415 and resp.content_type == PROBLEM and "application/gzip" in await resp.text()
    # a tenant's own publish is its own: another tenant does not see it
    op = await _publish(api, archive, headers=as_tenant)
    assert op["status"] == "succeeded" and op["result"]["tenant"] == tenant, op


@pytest.mark.parametrize("api", [{"hub_max_package_bytes": 4096}], indirect=True)
async def test_an_archive_over_the_size_cap_is_413(api: TestClient[Any, Any]) -> None:
    resp = await api.post("/api/v1/hub/packages", data=os.urandom(5000))
    assert resp.status == 413 and resp.content_type == PROBLEM


async def test_the_cli_publishes_searches_lists_and_fetches_a_checked_copy(
    api: TestClient[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("cli").replace("_", "-")
    archive = tmp_path / "pkg.glpack"
    archive.write_bytes(_archive(tmp_path, name, "0.1.0", signed=False))
    shown = json.loads(ok(await agent_factory(api, "agent", "publish", str(archive), "-o", "json")))
    assert (shown["name"], shown["version"]) == (name, "0.1.0")
    table = ok(await agent_factory(api, "agent", "search", name, "--tag", "ghg"))
    assert name in table and "0.1.0" in table and "public" in table
    listed = json.loads(ok(await agent_factory(api, "agent", "versions", name, "-o", "json")))
    assert [p["version"] for p in listed["packages"]] == ["0.1.0"]
    monkeypatch.chdir(tmp_path)
    got = json.loads(ok(await agent_factory(api, "agent", "fetch", name, "-o", "json")))
    assert _same_file(got["file"], archive)
    # a backport published after a higher version: fetch takes the highest, not the last
    for version in ("0.3.0", "0.2.1"):
        later = tmp_path / f"{version}.glpack"
        later.write_bytes(_archive(tmp_path, name, version, signed=False))
        ok(await agent_factory(api, "agent", "publish", str(later), "-o", "json"))
    got = json.loads(ok(await agent_factory(api, "agent", "fetch", name, "-o", "json")))
    assert got["version"] == "0.3.0"
    # a refused publish is one line and exit 1
    broken = tmp_path / "broken.glpack"
    broken.write_bytes(_archive(tmp_path, name, "0.3.1", signed=False, with_co2=False))
    result = await agent_factory(api, "agent", "publish", str(broken))
    assert result.exit_code == 1 and "needs a major bump" in result.output, result.output
    missing = await agent_factory(api, "agent", "fetch", f"{name}@9.9.9")
    assert missing.exit_code == 1 and "9.9.9" in missing.output


def _same_file(written: str, archive: Path) -> bool:
    return Path(written).read_bytes() == archive.read_bytes()


async def test_a_public_version_follows_the_public_line_not_a_tenants_fork(
    api: TestClient[Any, Any], tmp_path: Path
) -> None:
    tenant = unique("fork")
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status == 201
    resp = await api.post("/api/v1/tokens", json={"scope": "operator", "name": "op", "tenant": tenant})
    as_tenant = {"Authorization": f"Bearer {(await resp.json())['secret']}"}
    name = unique("line").replace("_", "-")
    public = await _publish(api, _archive(tmp_path, name, "1.0.0", signed=False, with_co2=False))
    assert public["status"] == "succeeded", public
    fork = await _publish(api, _archive(tmp_path, name, "1.5.0", signed=False), headers=as_tenant)
    assert fork["status"] == "succeeded" and fork["result"]["tenant"] == tenant, fork  # adds co2: no break
    # the next public version has no co2, as the public 1.0.0: no break for the public line
    nxt = await _publish(api, _archive(tmp_path, name, "1.6.0", signed=False, with_co2=False))
    assert nxt["status"] == "succeeded", nxt
    # the tenant's own next version is held to its own line (1.5.0, with co2)
    own = await _publish(
        api, _archive(tmp_path, name, "1.7.0", signed=False, with_co2=False), headers=as_tenant
    )
    assert own["status"] == "failed" and "needs a major bump" in own["error"], own

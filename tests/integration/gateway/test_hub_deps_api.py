"""A package's dependencies against the hub, on the real servers: a diamond resolves to
one version of each agent with its install order and parallel levels; a conflict is a
409 problem with the chains that collide; a cycle a 422 problem with its path; a
tenant's private agent resolves for that tenant only; the CLI prints the graph as
text, JSON and DOT that parses back to the same graph, for a hub version and for a
pack directory; the compatibility matrix says, per version, whether it runs on this
platform and which versions satisfy each of its ranges; and publish refuses a pack
whose platform range excludes this platform."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.hub import Hub, Published
from agents.packaging import pack_bytes
from agents.packaging.platform_support import platform_version
from tests.helpers import unique
from tests.integration.gateway.conftest import PROBLEM, agent_factory, ok
from tests.integration.gateway.test_hub_publish import _publish, _tree
from tests.integration.gateway.test_openapi import Answers

Versions = dict[str, dict[str, dict[str, str]]]


async def _published(
    pool: asyncpg.Pool, nc: Client, js: JetStreamContext, packages: Versions, *,
    tenant: str | None = None, platform: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Index ``{name: {version: {dependency: range}}}`` (the archives' bytes do not matter here)."""
    hub = Hub(pool, nc, js)
    for name, versions in packages.items():
        for version, deps in versions.items():
            spec: dict[str, Any] = {"dependencies": deps}
            if platform and version in platform:
                spec["platform"] = platform[version]
            what = Published(name, version, manifest={"spec": spec})
            await hub.publish(f"{name} {version}".encode(), what, tenant=tenant, publisher="test")


def _diamond(stem: str) -> Versions:
    """app → a, b; a and b → c, with ranges only c 2.1.0 satisfies both."""
    return {
        f"{stem}-app": {"1.0.0": {f"{stem}-a": "^1.0", f"{stem}-b": "^1.0"}},
        f"{stem}-a": {"1.0.0": {f"{stem}-c": "^2.0"}, "1.1.0": {f"{stem}-c": "^2.1"}},
        f"{stem}-b": {"1.0.0": {f"{stem}-c": ">=2.0,<2.2"}},
        f"{stem}-c": {"2.0.0": {}, "2.1.0": {}, "2.2.0": {}, "3.0.0": {}},
    }


async def test_a_diamond_resolves_to_one_version_of_each_agent_in_install_order(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    stem = unique("dia")
    await _published(pool, nc, mesh_js, _diamond(stem))
    resp = await api.get(f"/api/v1/hub/packages/{stem}-app/1.0.0/graph")
    assert resp.status == 200, await resp.text()
    graph = await resp.json()
    assert {n["name"]: n["version"] for n in graph["nodes"]} == {
        f"{stem}-app": "1.0.0", f"{stem}-a": "1.1.0", f"{stem}-b": "1.0.0", f"{stem}-c": "2.1.0"}  # fmt: skip
    assert graph["order"] == [f"{stem}-c", f"{stem}-a", f"{stem}-b", f"{stem}-app"]
    assert graph["levels"] == [[f"{stem}-c"], [f"{stem}-a", f"{stem}-b"], [f"{stem}-app"]]
    assert {"from": f"{stem}-b", "to": f"{stem}-c", "range": ">=2.0,<2.2"} in graph["edges"]
    assert len(graph["edges"]) == 4


async def test_the_answers_are_what_the_openapi_document_says(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    stem = unique("doc")
    packages = _diamond(stem)
    packages[f"{stem}-bad"] = {"1.0.0": {f"{stem}-c": "^9"}}
    await _published(pool, nc, mesh_js, packages)
    answers = Answers(await (await api.get("/api/v1/openapi.json")).json())
    graph = "/api/v1/hub/packages/{package}/{version}/graph"
    for url, status in ((f"/api/v1/hub/packages/{stem}-app/1.0.0/graph", 200),
                        (f"/api/v1/hub/packages/{stem}-bad/1.0.0/graph", 409)):  # fmt: skip
        async with api.get(url) as resp:
            assert resp.status == status, await resp.text()
            await answers.check(resp, "GET", graph)
    async with api.get(f"/api/v1/hub/packages/{stem}-a/compat") as resp:
        assert resp.status == 200
        await answers.check(resp, "GET", "/api/v1/hub/packages/{package}/compat")
    body = {"name": f"{stem}-new", "version": "0.1.0", "dependencies": {f"{stem}-a": "^1"}}
    async with api.post("/api/v1/hub/resolve", json=body) as resp:
        assert resp.status == 200, await resp.text()
        await answers.check(resp, "POST", "/api/v1/hub/resolve")
    async with api.post("/api/v1/hub/resolve", json={**body, "dependencies": {"Bad Name": "^1"}}) as resp:
        assert resp.status == 422
        await answers.check(resp, "POST", "/api/v1/hub/resolve")


async def test_a_conflict_is_a_409_problem_with_the_chains_that_collide(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    stem = unique("clash")
    await _published(pool, nc, mesh_js, {
        f"{stem}-app": {"1.0.0": {f"{stem}-a": "^1.0", f"{stem}-d": "^1.0"}},
        f"{stem}-a": {"1.0.0": {f"{stem}-c": "^2.0"}},
        f"{stem}-d": {"1.0.0": {f"{stem}-c": "<2"}},
        f"{stem}-c": {"1.5.0": {}, "2.0.0": {}},
    })  # fmt: skip
    resp = await api.get(f"/api/v1/hub/packages/{stem}-app/1.0.0/graph")
    assert resp.status == 409 and resp.content_type == PROBLEM, await resp.text()
    problem = await resp.json()
    assert f"cannot pick a version of {stem}-c" in problem["detail"]
    assert f"{stem}-app 1.0.0 → {stem}-a ^1.0, {stem}-a 1.0.0 → {stem}-c ^2.0" in problem["detail"]
    assert f"{stem}-app 1.0.0 → {stem}-d ^1.0, {stem}-d 1.0.0 → {stem}-c <2" in problem["detail"]
    assert len(problem["chains"]) == 2


async def test_a_cycle_is_a_422_problem_with_its_path(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    stem = unique("loop")
    x, y, z = f"{stem}-x", f"{stem}-y", f"{stem}-z"
    await _published(pool, nc, mesh_js, {x: {"1.0.0": {y: "^1"}}, y: {"1.0.0": {z: "^1"}},
                                         z: {"1.0.0": {x: "^1"}}})  # fmt: skip
    resp = await api.get(f"/api/v1/hub/packages/{x}/1.0.0/graph")
    assert resp.status == 422 and resp.content_type == PROBLEM, await resp.text()
    problem = await resp.json()
    assert problem["cycle"] == [x, y, z, x]
    assert f"dependency cycle: {x} → {y} → {z} → {x}" in problem["detail"]


async def _reader(api: TestClient[Any, Any], tenant: str) -> dict[str, str]:
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status in (201, 409)
    resp = await api.post("/api/v1/tokens", json={"scope": "reader", "name": tenant, "tenant": tenant})
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['secret']}"}


@pytest.mark.parametrize("api", [{"database_pool_size": 1}], indirect=True)
async def test_a_tenants_private_dependency_resolves_for_that_tenant_only(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    acme, globex, stem = unique("acme"), unique("globex"), unique("priv")
    as_acme, as_globex = await _reader(api, acme), await _reader(api, globex)
    await _published(pool, nc, mesh_js, {f"{stem}-app": {"1.0.0": {f"{stem}-secret": "^1"}}})
    await _published(pool, nc, mesh_js, {f"{stem}-secret": {"1.0.0": {}}}, tenant=acme)
    path = f"/api/v1/hub/packages/{stem}-app/1.0.0/graph"
    resp = await api.get(path, headers=as_acme)
    assert resp.status == 200, await resp.text()
    assert [n["name"] for n in (await resp.json())["nodes"]] == [f"{stem}-app", f"{stem}-secret"]
    resp = await api.get(path, headers=as_globex)
    assert resp.status == 409 and f"no agent named '{stem}-secret'" in (await resp.json())["detail"]
    resp = await api.get(f"/api/v1/hub/packages/{stem}-secret/compat", headers=as_globex)
    assert resp.status == 404 and resp.content_type == PROBLEM

    # a token of every tenant resolves in the package's scope: acme's own for acme's package …
    await _published(
        pool, nc, mesh_js, {f"{stem}-acme-app": {"1.0.0": {f"{stem}-secret": "^1"}}}, tenant=acme
    )
    resp = await api.get(f"/api/v1/hub/packages/{stem}-acme-app/1.0.0/graph")
    assert resp.status == 200, await resp.text()
    # … and public only for a public package, whichever tenant forked one of its dependencies
    await _published(pool, nc, mesh_js, {f"{stem}-lib": {"1.0.0": {}}})
    await _published(pool, nc, mesh_js, {f"{stem}-lib": {"1.0.0": {f"{stem}-secret": "^1"}}}, tenant=acme)
    await _published(pool, nc, mesh_js, {f"{stem}-pub": {"1.0.0": {f"{stem}-lib": "^1"}}})
    resp = await api.get(f"/api/v1/hub/packages/{stem}-pub/1.0.0/graph")
    assert [n["name"] for n in (await resp.json())["nodes"]] == [f"{stem}-lib", f"{stem}-pub"]
    resp = await api.get(f"/api/v1/hub/packages/{stem}-pub/1.0.0/graph", headers=as_acme)  # acme's fork
    assert [n["name"] for n in (await resp.json())["nodes"]] == [
        f"{stem}-lib",
        f"{stem}-pub",
        f"{stem}-secret",
    ]
    resp = await api.get(f"/api/v1/hub/packages/{stem}-lib/compat")
    rows = [(r["version"], r["scope"], list(r["dependencies"])) for r in (await resp.json())["versions"]]
    assert rows == [("1.0.0", acme, [f"{stem}-secret"]), ("1.0.0", "public", [])]


_DOT_STATEMENT = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")(?:\s*->\s*("(?:[^"\\]|\\.)*"))?(?:\s*\[(.*)\])?'
                            r"|rankdir=\w+|node \[[^\]]*\]);")  # fmt: skip


def _parse_dot(text: str) -> tuple[dict[str, str], set[tuple[str, str]]]:
    """Our DOT, parsed strictly: every line a statement, else it fails. (labels, edges)."""
    lines = text.strip().splitlines()
    assert lines[0] == "digraph agents {" and lines[-1] == "}", text
    labels, edges = {}, set()
    for line in lines[1:-1]:
        match = _DOT_STATEMENT.fullmatch(line)
        assert match is not None, f"not a DOT statement: {line!r}"
        head, tail, attrs = match.groups()
        if head and tail:
            edges.add((json.loads(head), json.loads(tail)))
        elif head:
            label = re.fullmatch(r'label=("(?:[^"\\]|\\.)*")', attrs or "")
            assert label is not None, line
            labels[json.loads(head)] = json.loads(label.group(1))
    return labels, edges


async def test_the_cli_prints_the_graph_as_text_json_and_dot_for_a_hub_version_and_a_pack_dir(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext, tmp_path: Path
) -> None:
    stem = unique("cli")
    await _published(pool, nc, mesh_js, _diamond(stem))
    app, c = f"{stem}-app", f"{stem}-c"
    shown = json.loads(ok(await agent_factory(api, "agent", "inspect", app, "--deps", "-o", "json")))
    assert shown["order"][-1] == app and len(shown["nodes"]) == 4  # newest version without @VERSION
    text = ok(await agent_factory(api, "agent", "inspect", f"{app}@1.0.0", "--deps"))
    assert f"-> {c} ^2.1  (2.1.0)" in text and f"level 0 {c} 2.1.0" in text
    dot = ok(await agent_factory(api, "agent", "inspect", f"{app}@1.0.0", "--deps", "--format", "dot"))
    running = json.loads(ok(await agent_factory(api, "agent", "inspect", "noop", "-o", "json")))
    assert running["key"] == "noop" and "resilience" in running  # without --deps: the running agent
    assert "resilience" in ok(await agent_factory(api, "agent", "inspect", "noop"))
    misused = await agent_factory(api, "agent", "inspect", app, "--format", "dot")
    assert misused.exit_code == 1 and "add --deps" in misused.output
    labels, edges = _parse_dot(dot)
    assert labels == {n["name"]: f"{n['name']}\n{n['version']}" for n in shown["nodes"]}
    assert edges == {(e["from"], e["to"]) for e in shown["edges"]}

    pack = tmp_path / "mine"
    pack.mkdir()
    (pack / "agent.pack.yaml").write_text(
        f"spec_version: 1\nname: {stem}-mine\nversion: 0.1.0\ntype: deterministic\n"
        f"entry_point: mine.agent:Mine\ndependencies:\n  {stem}-b: ^1\n"
    )
    local = json.loads(
        ok(await agent_factory(api, "agent", "inspect", str(pack), "--deps", "--format", "json"))
    )
    assert {n["name"]: n["version"] for n in local["nodes"]} == {
        f"{stem}-mine": "0.1.0", f"{stem}-b": "1.0.0", c: "2.1.0"}  # fmt: skip
    (pack / "agent.pack.yaml").write_text((pack / "agent.pack.yaml").read_text() + f"  {stem}-zz: ^1\n")
    missing = await agent_factory(api, "agent", "inspect", str(pack), "--deps")
    assert missing.exit_code == 1 and f"no agent named '{stem}-zz'" in missing.output, missing.output


async def test_the_compat_matrix_shows_the_platform_and_the_versions_satisfying_each_range(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    stem = unique("compat")
    packages = _diamond(stem)
    packages[f"{stem}-a"]["2.0.0"] = {f"{stem}-c": "^9"}
    await _published(pool, nc, mesh_js, packages, platform={"1.0.0": ">=0.0.1", "1.1.0": ">=99"})
    resp = await api.get(f"/api/v1/hub/packages/{stem}-a/compat")
    assert resp.status == 200, await resp.text()
    matrix = await resp.json()
    assert matrix["platform"] == platform_version()
    rows = {row["version"]: row for row in matrix["versions"]}
    assert list(rows) == ["2.0.0", "1.1.0", "1.0.0"]
    assert rows["1.0.0"]["compatible"] and rows["1.0.0"]["platform"] == ">=0.0.1"
    fits = {"range": "^2.0", "satisfied_by": ["2.2.0", "2.1.0", "2.0.0"]}
    assert rows["1.0.0"]["dependencies"] == {f"{stem}-c": fits}
    assert not rows["1.1.0"]["platform_compatible"] and rows["1.1.0"]["resolves"]
    assert not rows["1.1.0"]["compatible"]
    assert rows["2.0.0"]["dependencies"][f"{stem}-c"]["satisfied_by"] == []
    assert not rows["2.0.0"]["resolves"] and "no version of" in rows["2.0.0"]["problem"]
    table = ok(await agent_factory(api, "agent", "compat", f"{stem}-a"))
    assert f"on Agent Factory {platform_version()}" in table and ">=99 (no)" in table


async def test_publish_refuses_a_pack_whose_platform_range_excludes_this_platform(
    api: TestClient[Any, Any], tmp_path: Path
) -> None:
    name = unique("plat")
    tree = _tree(tmp_path / "pack", name, "1.0.0")
    (tree / "agent.pack.yaml").write_text((tree / "agent.pack.yaml").read_text() + "platform: '>=99,<100'\n")
    archive, _ = pack_bytes(tree)
    op = await _publish(api, archive)
    assert op["status"] == "failed"
    assert f"needs Agent Factory >=99,<100; this platform is {platform_version()}" in op["error"], op

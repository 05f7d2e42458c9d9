"""The hub's routes, as tenants' tokens on a pool of one connection: public packages
and a tenant's own are found, another tenant's private one is 404 however it is
asked for; a download carries the archive's digest, and an archive replaced in the
object store is a 502 problem, never its bytes."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.hub import Hub, Published
from mesh import names
from mesh.blobs import put_blob
from tests.helpers import unique
from tests.integration.gateway.conftest import PROBLEM

pytestmark = pytest.mark.parametrize("api", [{"database_pool_size": 1}], indirect=True)


async def _token(api: TestClient[Any, Any], scope: str, tenant: str) -> dict[str, str]:
    assert (await api.post("/api/v1/tenants", json={"id": tenant})).status in (201, 409)
    resp = await api.post(
        "/api/v1/tokens", json={"scope": scope, "name": f"{scope} {tenant}", "tenant": tenant}
    )
    assert resp.status == 201, await resp.text()
    return {"Authorization": f"Bearer {(await resp.json())['secret']}"}


async def test_tenants_find_public_packages_and_their_own_and_download_checked_archives(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    acme, globex = unique("acme"), unique("globex")
    as_acme, as_globex = await _token(api, "reader", acme), await _token(api, "reader", globex)
    hub, stem = Hub(pool, nc, mesh_js), unique("ghg").replace("-", "")
    public = f"{stem}-public"
    private = f"{stem}-private"
    await hub.publish(b"public 1", Published(public, "1.0.0", "Public emissions"), tenant=None, publisher="t")
    await hub.publish(b"public 2", Published(public, "1.1.0", "Public emissions"), tenant=None, publisher="t")
    await hub.publish(b"acme's", Published(private, "0.1.0", "Acme only"), tenant=acme, publisher="t")

    async def names_found(headers: dict[str, str]) -> set[tuple[str, str]]:
        resp = await api.get(f"/api/v1/hub/packages?q={stem}", headers=headers)
        assert resp.status == 200, await resp.text()
        return {(p["name"], p["version"]) for p in (await resp.json())["packages"]}

    assert await names_found(as_acme) == {(public, "1.1.0"), (private, "0.1.0")}
    assert await names_found(as_globex) == {(public, "1.1.0")}
    for path in (f"{private}", f"{private}/0.1.0", f"{private}/0.1.0/archive"):
        resp = await api.get(f"/api/v1/hub/packages/{path}", headers=as_globex)
        assert resp.status == 404 and resp.content_type == PROBLEM, path
    resp = await api.get(f"/api/v1/hub/packages/{public}", headers=as_globex)
    assert [p["version"] for p in (await resp.json())["packages"]] == ["1.1.0", "1.0.0"]

    resp = await api.get(f"/api/v1/hub/packages/{private}/0.1.0/archive", headers=as_acme)
    assert resp.status == 200 and await resp.read() == b"acme's"
    digest = hashlib.sha256(b"acme's").digest()
    assert resp.headers["X-Package-Sha256"] == digest.hex()
    assert resp.headers["Digest"] == "sha-256=" + base64.b64encode(digest).decode()

    shown = await (await api.get(f"/api/v1/hub/packages/{public}/1.0.0", headers=as_acme)).json()
    await put_blob(mesh_js, names.OBJECTS_PACKAGES, shown["object"], b"something else")
    resp = await api.get(f"/api/v1/hub/packages/{public}/1.0.0/archive", headers=as_acme)
    assert resp.status == 502 and resp.content_type == PROBLEM
    assert "refused" in (await resp.json())["detail"]


async def test_bad_hub_requests_are_problems(api: TestClient[Any, Any]) -> None:
    for path in ("/api/v1/hub/packages?limit=0", "/api/v1/hub/packages?tags=Bad%20Tag",
                 "/api/v1/hub/packages?q=a%00b", "/api/v1/hub/packages/Not_A_Name",
                 "/api/v1/hub/packages/ok/..%2F1"):  # fmt: skip
        resp = await api.get(path)
        assert resp.status in (400, 404, 422) and resp.content_type == PROBLEM, (path, resp.status)

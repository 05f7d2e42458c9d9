"""The hub's archives and index on the real servers: a tenant sees public packages and
its own, never another tenant's; a version is published once per scope; a download is
checked against the digest the index holds (a replaced archive is refused, not
served); search finds packages by word, name prefix and tags, newest version first."""

from __future__ import annotations

import hashlib
import os

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import ObjectNotFoundError

import agents.hub.catalog
import mesh.blobs
from agents.hub import Hub, PackageExists, PackageNotFound, Published
from agents.store.hub_index import yank_package
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh import names
from mesh.blobs import BlobCorrupt, get_blob, put_blob
from tests.helpers import unique


def _pkg(name: str, version: str = "1.0.0", **what: object) -> Published:
    return Published(name=name, version=version, **what)  # type: ignore[arg-type]


async def test_a_tenant_sees_public_packages_and_its_own_only(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    hub, name = Hub(app, nc, mesh_js), unique("scope")
    acme, globex = unique("acme"), unique("globex")
    public = await hub.publish(b"public bytes", _pkg(name, "1.0.0"), tenant=None, publisher="admin")
    own = await hub.publish(b"acme bytes", _pkg(name, "1.1.0"), tenant=acme, publisher="acme-op")
    assert (
        public.tenant is None
        and own.tenant == acme
        and own.digest == hashlib.sha256(b"acme bytes").hexdigest()
    )

    assert {p.version for p in await hub.versions(name, tenant=acme)} == {"1.0.0", "1.1.0"}
    assert {p.version for p in await hub.versions(name, tenant=globex)} == {"1.0.0"}
    with pytest.raises(PackageNotFound):
        await hub.download(name, "1.1.0", tenant=globex)  # acme's: as if it did not exist
    _, data = await hub.download(name, "1.1.0", tenant=acme)
    assert data == b"acme bytes"
    _, data = await hub.download(name, "1.0.0", tenant=globex)
    assert data == b"public bytes"
    # a tenant may publish its own build of a public version; it then reads its own
    await hub.publish(b"globex build", _pkg(name, "1.0.0"), tenant=globex, publisher="globex-op")
    assert (await hub.download(name, "1.0.0", tenant=globex))[1] == b"globex build"
    assert (await hub.download(name, "1.0.0", tenant=acme))[1] == b"public bytes"
    # downloads are counted, a public package's by a tenant too
    async with tenant_scope(app, ALL_TENANTS) as conn:
        counted = {(r["tenant"], r["version"]): r["downloads"] for r in await conn.fetch(
            "SELECT tenant, version, downloads FROM hub_packages WHERE name = $1", name)}  # fmt: skip
    assert counted == {(None, "1.0.0"): 2, (acme, "1.1.0"): 1, (globex, "1.0.0"): 1}


async def test_a_version_is_published_once_and_a_refused_upload_leaves_the_first_archive(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, name = Hub(app, nc, mesh_js), unique("once")
    await hub.publish(b"first", _pkg(name), tenant=None, publisher="admin")
    with pytest.raises(PackageExists, match="publish a new version"):
        await hub.publish(b"second", _pkg(name), tenant=None, publisher="admin")
    # Two publishes racing: the loser's check saw nothing, its upload went through, the
    # index refused it; its archive is deleted and the winner's is served.
    monkeypatch.setattr(agents.hub.catalog, "package_versions", _none)
    with pytest.raises(PackageExists):
        await hub.publish(b"racer", _pkg(name), tenant=None, publisher="admin")
    store = await mesh_js.object_store(names.OBJECTS_PACKAGES)
    racer = names.package_object(name, "1.0.0", None, hashlib.sha256(b"racer").hexdigest())
    with pytest.raises(ObjectNotFoundError):
        await store.get_info(racer)
    assert (await hub.download(name, "1.0.0", tenant=None))[1] == b"first"


async def _none(conn: asyncpg.Connection, name: str) -> list[object]:
    return []


async def test_a_racer_with_the_same_bytes_leaves_the_winners_archive(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same bytes are the same object (named by digest): the loser must not delete it."""
    hub, name = Hub(app, nc, mesh_js), unique("twin")
    await hub.publish(b"same bytes", _pkg(name), tenant=None, publisher="admin")
    real = agents.hub.catalog.package_versions
    calls: list[str] = []

    async def blind_once(conn: asyncpg.Connection, wanted: str) -> list[object]:
        calls.append(wanted)
        return [] if len(calls) == 1 else list(await real(conn, wanted))  # its early check saw nothing

    monkeypatch.setattr(agents.hub.catalog, "package_versions", blind_once)
    with pytest.raises(PackageExists):
        await hub.publish(b"same bytes", _pkg(name), tenant=None, publisher="admin")
    assert (await hub.download(name, "1.0.0", tenant=None))[1] == b"same bytes"


async def test_an_archive_replaced_in_the_object_store_is_refused_not_served(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    hub, name = Hub(app, nc, mesh_js), unique("tampered")
    big = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    package = await hub.publish(big, _pkg(name), tenant=None, publisher="admin")
    assert (await hub.download(name, "1.0.0", tenant=None))[1] == big
    await put_blob(mesh_js, names.OBJECTS_PACKAGES, package.object, big[:-1] + b"\x00")
    with pytest.raises(BlobCorrupt, match=r"not the \w+ recorded"):
        await hub.download(name, "1.0.0", tenant=None)


async def test_search_by_words_prefix_and_tags_newest_version_and_no_yanked(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext
) -> None:
    hub, acme = Hub(app, nc, mesh_js), unique("acme")
    stem = unique("scope3").replace("-", "")
    fuel, grid, other = f"{stem}-fuel", f"{stem}-grid", f"{stem}-private"
    fuel_says = {"description": "Fuel combustion emissions", "tags": ["ghg", "scope1"]}
    await hub.publish(b"f1", _pkg(fuel, "1.0.0", **fuel_says), tenant=None, publisher="p")
    await hub.publish(b"f2", _pkg(fuel, "1.2.0", **fuel_says), tenant=None, publisher="p")
    grid_says = {"description": "Grid electricity factors", "tags": ["ghg", "scope2"]}
    await hub.publish(b"g1", _pkg(grid, "0.3.0", **grid_says), tenant=None, publisher="p")
    await hub.publish(b"p1", _pkg(other, "1.0.0", description="Acme combustion tweaks", tags=["ghg"]),
                      tenant=acme, publisher="p")  # fmt: skip

    found = await hub.search(stem, tenant="someone-else")  # a name prefix
    assert [(p.name, p.version) for p in found] == [(fuel, "1.2.0"), (grid, "0.3.0")] or [
        (p.name, p.version) for p in found] == [(grid, "0.3.0"), (fuel, "1.2.0")]  # fmt: skip
    words = await hub.search("combustion", tags=["ghg"], tenant=acme, limit=100)
    assert {p.name for p in words if p.name.startswith(stem)} == {fuel, other}
    assert {p.name for p in await hub.search(stem, tags=["scope2"], tenant=acme)} == {grid}
    async with tenant_scope(app, ALL_TENANTS) as conn:
        await yank_package(conn, fuel, "1.2.0", None)
    assert [(p.name, p.version) for p in await hub.search(stem, tags=["scope1"], tenant=acme)] == [
        (fuel, "1.0.0")
    ]
    # yanked: still downloadable by its exact version
    assert (await hub.download(fuel, "1.2.0", tenant=acme))[1] == b"f2"


async def test_an_archive_missing_a_chunk_is_refused(
    app: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mesh.blobs, "READ_PATIENCE_S", 0.5)
    hub, name = Hub(app, nc, mesh_js), unique("holed")
    package = await hub.publish(os.urandom(600 * 1024), _pkg(name), tenant=None, publisher="admin")
    store = await mesh_js.object_store(names.OBJECTS_PACKAGES)
    info = await store.get_info(package.object)
    stream = f"OBJ_{names.OBJECTS_PACKAGES}"
    second = await mesh_js.get_msg(
        stream, seq=1, subject=f"$O.{names.OBJECTS_PACKAGES}.C.{info.nuid}", next=True
    )
    await mesh_js.delete_msg(stream, (second.seq or 0) + 1)  # the second of its five chunks
    with pytest.raises(BlobCorrupt, match="4 of its 5 chunks"):
        await hub.download(name, "1.0.0", tenant=None)


async def test_a_blob_put_without_replace_leaves_an_object_of_that_name_as_it_is(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    name = f"test/{unique('once')}"
    first = await put_blob(mesh_js, names.OBJECTS_PACKAGES, name, b"first")
    store = await mesh_js.object_store(names.OBJECTS_PACKAGES)
    nuid = (await store.get_info(name)).nuid
    await put_blob(mesh_js, names.OBJECTS_PACKAGES, name, b"first", replace=False)
    assert (await store.get_info(name)).nuid == nuid  # not rewritten: a reader's chunks stay
    assert await get_blob(nc, mesh_js, names.OBJECTS_PACKAGES, name, first) == b"first"
    await put_blob(mesh_js, names.OBJECTS_PACKAGES, name, b"first")  # replace (the default) rewrites
    assert (await store.get_info(name)).nuid != nuid

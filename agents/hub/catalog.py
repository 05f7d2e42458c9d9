"""Publishing, finding and fetching package versions (see :mod:`agents.hub`).

A publish stores the archive first, under a name that carries its digest,
then indexes it; a version is published once per scope (public, or one
tenant's). A crash between the two leaves an archive nobody indexes (space,
never a package without its bytes); an index refusal (the version exists)
deletes the archive it had stored. A download reads the archive back and
checks it against the digest in the index (:func:`mesh.blobs.get_blob`), so a
replaced or damaged object is refused, not served.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.store.hub_index import (
    HubPackage,
    PackageExists,
    count_download,
    get_package,
    insert_package,
    package_versions,
    search_packages,
)
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from mesh import names
from mesh.blobs import delete_blob, get_blob, put_blob

__all__ = ["Hub", "Published"]


@dataclass(frozen=True, slots=True)
class Published:
    """What a publish indexes beside the archive (read from the package by its checks)."""

    name: str
    version: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    signature_key: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


class Hub:
    """The hub of one platform: ``pool`` (its index), ``nc``/``js`` (its archives)."""

    def __init__(self, pool: asyncpg.Pool, nc: Client, js: JetStreamContext) -> None:
        self.pool, self.nc, self.js = pool, nc, js

    async def publish(
        self, archive: bytes, what: Published, *, tenant: str | None, publisher: str
    ) -> HubPackage:
        """Store and index ``archive`` as ``what``: public (``tenant`` None) or ``tenant``'s
        own. :class:`PackageExists` if that version is published in that scope."""
        if await self._indexed(what, tenant) is not None:  # refused early, before any upload
            raise PackageExists(f"{what.name} {what.version} is already published: publish a new version")
        digest = hashlib.sha256(archive).hexdigest()
        obj = names.package_object(what.name, what.version, tenant, digest)
        await put_blob(self.js, names.OBJECTS_PACKAGES, obj, archive, replace=False)  # named by its digest
        package = HubPackage(
            name=what.name, version=what.version, tenant=tenant, description=what.description,
            tags=what.tags, digest=digest, size_bytes=len(archive), object=obj, publisher=publisher,
            signature_key=what.signature_key, manifest=what.manifest,
        )  # fmt: skip
        try:
            async with tenant_scope(self.pool, tenant) as conn:
                return await insert_package(conn, package)
        except PackageExists:  # published meanwhile by another request: its archive stays
            winner = await self._indexed(what, tenant)
            if winner is None or winner.object != obj:  # the same bytes are the same object: keep it
                await delete_blob(self.js, names.OBJECTS_PACKAGES, obj)
            raise

    async def _indexed(self, what: Published, tenant: str | None) -> HubPackage | None:
        """``what``'s version as indexed in ``tenant``'s scope (None: public), if it is."""
        async with tenant_scope(self.pool, tenant) as conn:
            found = await package_versions(conn, what.name)
        return next((p for p in found if p.version == what.version and p.tenant == tenant), None)

    async def download(self, name: str, version: str, *, tenant: str | None) -> tuple[HubPackage, bytes]:
        """``name`` ``version`` as ``tenant`` sees it, and its archive, checked against its digest."""
        async with tenant_scope(self.pool, tenant) as conn:
            package = await get_package(conn, name, version)
        return package, await self.archive(package)

    async def archive(self, package: HubPackage) -> bytes:
        """``package``'s archive, checked against its digest, counted as a download."""
        data = await get_blob(self.nc, self.js, names.OBJECTS_PACKAGES, package.object, package.digest)
        async with tenant_scope(self.pool, ALL_TENANTS) as conn:
            await count_download(conn, package)
        return data

    async def get(self, name: str, version: str, *, tenant: str | None) -> HubPackage:
        async with tenant_scope(self.pool, tenant) as conn:
            return await get_package(conn, name, version)

    async def versions(self, name: str, *, tenant: str | None) -> list[HubPackage]:
        async with tenant_scope(self.pool, tenant) as conn:
            return await package_versions(conn, name)

    async def search(
        self,
        text: str = "",
        tags: list[str] | None = None,
        *,
        tenant: str | None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[HubPackage]:
        async with tenant_scope(self.pool, tenant) as conn:
            return await search_packages(conn, text, tags, limit, offset)

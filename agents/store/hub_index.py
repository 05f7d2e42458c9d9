"""The Agent Hub's index in PostgreSQL (``hub_packages``, migration 011): one row per
published package version; its archive is in the object store (``agents.hub``).

Row security decides what a transaction sees: public packages (``tenant`` NULL)
and its own tenant's private ones; a transaction of every tenant sees all.
These functions take a connection already in
:func:`~agents.store.tenancy.tenant_scope`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

from agents.errors import AgentError

__all__ = [
    "HubPackage",
    "IndexedVersion",
    "PackageExists",
    "PackageNotFound",
    "count_download",
    "dependency_rows",
    "get_package",
    "insert_package",
    "package_versions",
    "search_packages",
    "yank_package",
]


class PackageNotFound(AgentError):
    status = 404


class PackageExists(AgentError):
    """A version is published once: a changed package is a new version."""

    status = 409


class HubPackage(BaseModel):
    """One published version of a package, as indexed."""

    name: str
    version: str
    tenant: str | None = Field(description="null: public, every tenant reads it")
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    digest: str = Field(description="SHA-256 of the archive, hex")
    size_bytes: int
    object: str = Field(description="the archive's name in the object store")
    publisher: str = ""
    signature_key: str | None = Field(
        default=None, description="id of the key that signed it; null: unsigned"
    )
    manifest: dict[str, Any] = Field(default_factory=dict)
    downloads: int = 0
    published_at: datetime | None = None
    yanked_at: datetime | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> HubPackage:
        data = {k: row[k] for k in cls.model_fields}
        if isinstance(data["manifest"], str):
            data["manifest"] = json.loads(data["manifest"])
        return cls.model_validate(data)


_COLUMNS = ", ".join(HubPackage.model_fields)


async def insert_package(conn: asyncpg.Connection, package: HubPackage) -> HubPackage:
    """Index ``package`` (:class:`PackageExists` if this version is indexed in its scope)."""
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO hub_packages (name, version, tenant, description, tags, digest, size_bytes,
                                          object, publisher, signature_key, manifest)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb) RETURNING {_COLUMNS}""",
            package.name, package.version, package.tenant, package.description, package.tags,
            package.digest, package.size_bytes, package.object, package.publisher, package.signature_key,
            json.dumps(package.manifest),
        )  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        where = "the public hub" if package.tenant is None else f"tenant {package.tenant}'s packages"
        raise PackageExists(
            f"{package.name} {package.version} is already in {where}: publish a new version"
        ) from exc
    assert row is not None
    return HubPackage.from_row(row)


async def get_package(conn: asyncpg.Connection, name: str, version: str) -> HubPackage:
    """``name`` ``version`` as this transaction sees it: its tenant's own before a public one."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM hub_packages WHERE name = $1 AND version = $2
            ORDER BY tenant IS NULL LIMIT 1""",
        name, version,
    )  # fmt: skip
    if row is None:
        raise PackageNotFound(f"no package {name} {version} in the hub")
    return HubPackage.from_row(row)


async def package_versions(conn: asyncpg.Connection, name: str) -> list[HubPackage]:
    """Every visible version of ``name``, newest published first (yanked ones too, marked)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM hub_packages WHERE name = $1 ORDER BY published_at DESC, id DESC", name
    )
    return [HubPackage.from_row(r) for r in rows]


async def search_packages(
    conn: asyncpg.Connection, text: str = "", tags: list[str] | None = None, limit: int = 20, offset: int = 0
) -> list[HubPackage]:
    """The packages matching ``text`` (words of the name and description, or a name
    prefix) that carry every tag of ``tags``: each package's newest version that is
    not yanked, best match first, then the most downloaded."""
    rows = await conn.fetch(
        f"""WITH q AS (SELECT plainto_tsquery('simple', $1) AS query),
            hits AS (
                SELECT DISTINCT ON (coalesce(tenant, '*'), name) {_COLUMNS},
                       ts_rank(search, q.query) + CASE WHEN starts_with(name, $1) THEN 1 ELSE 0 END AS rank
                FROM hub_packages, q
                WHERE yanked_at IS NULL
                  AND ($1 = '' OR search @@ q.query OR starts_with(name, $1))
                  AND ($2::text[] IS NULL OR tags @> $2::text[])
                ORDER BY coalesce(tenant, '*'), name, published_at DESC, id DESC)
            SELECT * FROM hits ORDER BY rank DESC, downloads DESC, name LIMIT $3 OFFSET $4""",
        text.strip().lower(), tags or None, limit, offset,
    )  # fmt: skip
    return [HubPackage.from_row(r) for r in rows]


async def count_download(conn: asyncpg.Connection, package: HubPackage) -> None:
    """One more download of ``package`` (a transaction of every tenant: a tenant may
    not write a public package's row)."""
    await conn.execute(
        """UPDATE hub_packages SET downloads = downloads + 1
           WHERE name = $1 AND version = $2 AND tenant IS NOT DISTINCT FROM $3""",
        package.name, package.version, package.tenant,
    )  # fmt: skip


async def yank_package(conn: asyncpg.Connection, name: str, version: str, tenant: str | None) -> HubPackage:
    """Mark a version yanked: still downloadable by its exact version (what is installed
    keeps working), left out of search and of resolution."""
    row = await conn.fetchrow(
        f"""UPDATE hub_packages SET yanked_at = coalesce(yanked_at, now())
            WHERE name = $1 AND version = $2 AND tenant IS NOT DISTINCT FROM $3 RETURNING {_COLUMNS}""",
        name, version, tenant,
    )  # fmt: skip
    if row is None:
        raise PackageNotFound(f"no package {name} {version} of {tenant or 'the public hub'} to yank")
    return HubPackage.from_row(row)


@dataclass(frozen=True, slots=True)
class IndexedVersion:
    """What resolving needs of one version: its agent dependencies and platform range
    (from its spec in ``manifest``), without the rest of its manifest."""

    name: str
    version: str
    tenant: str | None
    yanked: bool
    dependencies: dict[str, str]
    platform: str | None


async def dependency_rows(conn: asyncpg.Connection, names: list[str]) -> list[IndexedVersion]:
    """Every visible version of each of ``names`` (yanked ones marked), with its dependencies."""
    rows = await conn.fetch(
        """SELECT name, version, tenant, yanked_at IS NOT NULL AS yanked,
                  coalesce(manifest->'spec'->'dependencies', '{}'::jsonb) AS dependencies,
                  manifest->'spec'->>'platform' AS platform
           FROM hub_packages WHERE name = ANY($1::text[])""",
        names,
    )
    found = []
    for r in rows:
        deps = json.loads(r["dependencies"]) if isinstance(r["dependencies"], str) else r["dependencies"]
        ranges = {str(k): str(v) for k, v in (deps or {}).items()}
        found.append(IndexedVersion(r["name"], r["version"], r["tenant"], r["yanked"], ranges, r["platform"]))
    return found

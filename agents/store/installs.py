"""Installed agent versions (``installed_packages``, migration 012): for a version
registered from a hub package, the package it came from, its entry point and
its schemas. The row is written with the version's lifecycle record in one
transaction, so a registered installed version always knows its code.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
from pydantic import BaseModel, Field

__all__ = ["InstalledVersion", "get_installed", "insert_installed", "list_installed"]


class InstalledVersion(BaseModel):
    """One agent version installed from the hub."""

    agent: str
    version: str
    digest: str = Field(description="SHA-256 of the package archive, hex")
    hub_tenant: str | None = Field(description="whose package it is in the hub; null: public")
    entry_point: str
    description: str = ""
    spec: dict[str, Any] = Field(description="the pack's agent.pack.yaml, as JSON")
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    installed_by: str
    installed_at: datetime | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> InstalledVersion:
        data = dict(row)
        data["agent"] = data.pop("agent_key")
        for key in ("spec", "input_schema", "output_schema"):
            if isinstance(data[key], str):
                data[key] = json.loads(data[key])
        return cls.model_validate(data)


_COLUMNS = (
    "agent_key, version, digest, hub_tenant, entry_point, description, spec, input_schema, output_schema,"
    " installed_by, installed_at"
)


async def insert_installed(conn: asyncpg.Connection, row: InstalledVersion) -> InstalledVersion:
    """Record ``row`` (its agent_versions row exists). Installing the same package again
    keeps the first record; another package under an installed version is refused by
    the caller, which compares digests first."""
    found = await conn.fetchrow(
        f"""INSERT INTO installed_packages (agent_key, version, digest, hub_tenant, entry_point,
                description, spec, input_schema, output_schema, installed_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10)
            ON CONFLICT (agent_key, version) DO UPDATE SET agent_key = EXCLUDED.agent_key
            RETURNING {_COLUMNS}""",
        row.agent, row.version, row.digest, row.hub_tenant, row.entry_point, row.description,
        json.dumps(row.spec), json.dumps(row.input_schema), json.dumps(row.output_schema), row.installed_by,
    )  # fmt: skip
    assert found is not None
    return InstalledVersion.from_row(found)


async def get_installed(
    conn: asyncpg.Connection | asyncpg.Pool, agent: str, version: str
) -> InstalledVersion | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM installed_packages WHERE agent_key = $1 AND version = $2", agent, version
    )
    return InstalledVersion.from_row(row) if row is not None else None


async def list_installed(
    conn: asyncpg.Connection | asyncpg.Pool, agent: str | None = None
) -> list[InstalledVersion]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM installed_packages WHERE $1::text IS NULL OR agent_key = $1"
        " ORDER BY agent_key, installed_at DESC",
        agent,
    )
    return [InstalledVersion.from_row(r) for r in rows]

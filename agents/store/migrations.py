"""Apply the numbered SQL migrations in ``deployment/sql`` exactly once each.

Safe to run from every replica at once: a session advisory lock serialises
runners, applied versions are recorded with a checksum, and an applied file
that was edited afterwards is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from agents.errors import MigrationFailed

__all__ = ["Migration", "apply_migrations", "load_migrations", "migrations_dir"]

_LOCK_ID = 0x4146_4D49  # "AFMI"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "deployment" / "sql"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationFailed(f"migration file name {path.name!r} is not NNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationFailed(f"duplicate migration versions in {directory}")
    return found


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[int] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationFailed(
                        f"migration {m.version:03d}_{m.name} was changed after it was applied;"
                        " add a new migration instead"
                    )
                continue
            try:
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1,$2,$3)",
                        m.version, m.name, m.checksum,
                    )  # fmt: skip
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(f"migration {m.version:03d}_{m.name} failed: {exc}") from exc
            done.append(m.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)

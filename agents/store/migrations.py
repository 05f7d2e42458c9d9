"""Apply the numbered SQL migrations in ``deployment/sql`` exactly once each, and undo them.

A migration is ``NNN_name.sql``; the SQL that undoes it is ``NNN_name.down.sql``
beside it (every migration has one: a test applies all, rolls all back and
applies all again on a real database). Rolling back runs the down files
newest first, each in its own transaction with its ``schema_migrations`` row.

Safe to run from every replica at once: a session advisory lock serialises
runners, applied versions are recorded with a checksum (of the up file), and
an applied file that was edited afterwards is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from agents.errors import MigrationFailed

__all__ = [
    "Migration",
    "applied_versions",
    "apply_migrations",
    "load_migrations",
    "migrations_dir",
    "roll_back",
]

_LOCK_ID = 0x4146_4D49  # "AFMI"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)(\.down)?\.sql$")


def migrations_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "deployment" / "sql"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    down: str | None = None  # the SQL that undoes it (``NNN_name.down.sql``)

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    ups: dict[int, tuple[str, str]] = {}
    downs: dict[int, tuple[str, str]] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationFailed(
                f"migration file name {path.name!r} is not NNN_name.sql or NNN_name.down.sql"
            )
        found = downs if match[3] else ups
        version = int(match[1])
        if version in found:
            raise MigrationFailed(f"duplicate migration versions in {directory}: {version:03d}")
        found[version] = (match[2], path.read_text())
    for version, (name, _) in downs.items():
        if ups.get(version, ("",))[0] != name:
            raise MigrationFailed(
                f"{version:03d}_{name}.down.sql undoes no migration {version:03d}_{name}.sql"
            )
    return [
        Migration(version, name, sql, downs[version][1] if version in downs else None)
        for version, (name, sql) in sorted(ups.items())
    ]


_CREATE_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())"""


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    """The versions applied to this database, oldest first."""
    await conn.execute(_CREATE_LEDGER)
    return [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]


async def roll_back(
    conn: asyncpg.Connection, to_version: int = 0, directory: Path | None = None
) -> list[int]:
    """Undo every applied migration above ``to_version``, newest first; returns
    the versions undone. Nothing is undone if one of them has no down file."""
    known = {m.version: m for m in load_migrations(directory)}
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        undo = [v for v in reversed(await applied_versions(conn)) if v > to_version]
        missing = [v for v in undo if v not in known or known[v].down is None]
        if missing:
            raise MigrationFailed(
                f"cannot roll back to {to_version:03d}: no down file for "
                + ", ".join(f"{v:03d}" for v in missing)
            )
        for version in undo:
            m = known[version]
            try:
                async with conn.transaction():
                    await conn.execute(m.down)
                    await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
            except asyncpg.PostgresError as exc:
                raise MigrationFailed(f"rolling back {m.version:03d}_{m.name} failed: {exc}") from exc
        return undo
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)


async def apply_migrations(conn: asyncpg.Connection, directory: Path | None = None) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    migrations = load_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(_CREATE_LEDGER)
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

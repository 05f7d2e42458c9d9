"""Every migration goes up and comes back down on a real PostgreSQL (issue 24 asks
it of every migration; issue 22's 004 is the first written that way).

Each test gets a database of its own, so rolling back never touches the
tables the other tests share."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from agents.errors import MigrationFailed
from agents.store.migrations import (
    applied_versions,
    apply_migrations,
    load_migrations,
    migrations_dir,
    roll_back,
)

_SCHEMA = """
SELECT 'column' AS kind, table_name || '.' || column_name || ' ' || data_type || ' '
       || is_nullable || ' ' || coalesce(column_default, '') AS what
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'policy', tablename || ' ' || policyname || ' ' || coalesce(qual, '') || ' '
       || coalesce(with_check, '')
FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'rls', relname || ' ' || relrowsecurity || ' ' || relforcerowsecurity
FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')
UNION ALL
SELECT 'function', p.oid::regprocedure::text || ' ' || p.prosecdef
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'grant', table_name || ' ' || grantee || ' ' || privilege_type
FROM information_schema.role_table_grants WHERE table_schema = 'public' AND grantee = 'af_app'
ORDER BY 1, 2
"""


async def _schema(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Every column, constraint, index, row-security policy and flag, function and
    grant to the application's role, outside the migrations ledger."""
    return [(r["kind"], r["what"]) for r in await conn.fetch(_SCHEMA) if "schema_migrations" not in r["what"]]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    name = f"mig_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    own = await asyncpg.connect(database_url.rsplit("/", 1)[0] + f"/{name}")
    try:
        yield own
    finally:
        await own.close()
        await admin.execute(f'DROP DATABASE "{name}"')
        await admin.close()


def test_every_migration_has_a_down_file() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert [m.version for m in migrations if not m.down] == []


async def test_all_up_all_down_all_up_leaves_the_same_schema(conn: asyncpg.Connection) -> None:
    versions = [m.version for m in load_migrations()]
    assert await apply_migrations(conn) == versions
    full = await _schema(conn)
    assert ("column", "agent_versions.state text NO 'created'::text") in full  # 004 is there

    assert await roll_back(conn, 0) == versions[::-1]
    assert await _schema(conn) == [] and await applied_versions(conn) == []

    assert await apply_migrations(conn) == versions
    assert await _schema(conn) == full


async def test_each_down_undoes_exactly_its_own_up(conn: asyncpg.Connection, tmp_path: Path) -> None:
    """Step by step: after rolling back to N-1 the schema is what migrations 1..N-1 made."""
    versions = [m.version for m in load_migrations()]
    await apply_migrations(conn)
    schema_at = {versions[-1]: await _schema(conn)}
    for version in reversed(versions):
        assert await roll_back(conn, version - 1) == [version]
        schema_at[version - 1] = await _schema(conn)
    for version in versions:
        await apply_migrations(conn, _only_up_to(version, tmp_path / str(version)))
        assert await _schema(conn) == schema_at[version], f"after applying {version:03d}"


def _only_up_to(version: int, target: Path) -> Path:
    """A copy of deployment/sql holding migrations 1..``version`` (down files too)."""
    target.mkdir()
    for path in migrations_dir().glob("*.sql"):
        if int(path.name[:3]) <= version:
            shutil.copy(path, target / path.name)
    return target


async def test_a_missing_down_file_refuses_the_whole_roll_back(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    for path in migrations_dir().glob("*.sql"):
        if path.name != "002_execution_errors_and_routing.down.sql":
            shutil.copy(path, tmp_path / path.name)
    await apply_migrations(conn, tmp_path)
    before = await _schema(conn)
    with pytest.raises(MigrationFailed, match="no down file for 002"):
        await roll_back(conn, 1, tmp_path)
    assert await _schema(conn) == before  # not even 004 and 003 were undone


async def test_a_down_that_would_misstate_data_is_refused_and_changes_nothing(
    conn: asyncpg.Connection,
) -> None:
    """003's down cannot hold a cancelled execution: it fails, its transaction with it."""
    await apply_migrations(conn)
    await conn.execute(
        """INSERT INTO executions (run_id, tenant, agent_key, status, enqueued_at, finished_at)
           VALUES ('r1', 't', 'a', 'cancelled', now(), now())"""
    )
    await roll_back(conn, 3)  # 004 goes
    before = await _schema(conn)
    with pytest.raises(MigrationFailed, match="rolling back 003_run_index_and_cancel failed"):
        await roll_back(conn, 2)
    assert await _schema(conn) == before and await applied_versions(conn) == [1, 2, 3]


def test_a_down_file_without_its_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "002_b.down.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationFailed, match=r"002_b.down.sql undoes no migration"):
        load_migrations(tmp_path)

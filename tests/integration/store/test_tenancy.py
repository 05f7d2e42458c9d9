"""Row security as the application's role sees it: a tenant's transaction reads and
writes its own rows only, the setting dies with the transaction, and a connection that
never set one sees nothing (isolation fails closed)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from agents.store.tenancy import ALL_TENANTS, app_pool, tenant_scope, tenant_transaction
from agents.store.tokens import authenticate, register_token

TABLES = (
    "executions", "runs", "billing_records", "api_tokens", "tenants", "operations", "operation_events",
    "config_versions", "limit_changes", "hub_packages",
)  # fmt: skip


@pytest.fixture
async def app(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection as af_app (``pool``, the owner's, ran the migrations)."""
    app = await app_pool(database_url, size=1)
    yield app
    await app.close()


async def _execution(pool: asyncpg.Pool, tenant: str) -> str:
    run_id = f"rls-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    await pool.execute(
        """INSERT INTO executions (run_id, tenant, agent_key, status, enqueued_at, finished_at)
           VALUES ($1, $2, 'noop', 'succeeded', $3, $3)""",
        run_id, tenant, now,
    )  # fmt: skip
    return run_id


async def test_every_tenant_scoped_table_forces_row_security(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY($1)",
        list(TABLES),
    )
    assert {r["relname"]: (r["relrowsecurity"], r["relforcerowsecurity"]) for r in rows} == {
        t: (True, True) for t in TABLES
    }
    owner = await pool.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'executions'")
    assert owner != "af_app"
    assert not await pool.fetchval("SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = 'af_app'")


async def test_a_tenant_reads_updates_and_deletes_its_own_rows_only(
    pool: asyncpg.Pool, app: asyncpg.Pool
) -> None:
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    mine, theirs = await _execution(pool, a), await _execution(pool, b)
    async with tenant_scope(app, a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE tenant = ANY($1)", [a, b]) == 1
        assert await conn.fetchrow("SELECT * FROM executions WHERE run_id = $1", theirs) is None
        assert await conn.execute("UPDATE executions SET error = 'x' WHERE run_id = $1", theirs) == "UPDATE 0"
        assert await conn.execute("DELETE FROM executions WHERE run_id = $1", theirs) == "DELETE 0"
        assert await conn.execute("UPDATE executions SET error = 'x' WHERE run_id = $1", mine) == "UPDATE 1"
    async with tenant_scope(app, a) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute("UPDATE executions SET tenant = $2 WHERE run_id = $1", mine, b)  # give it away
    async with tenant_scope(app, a) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute(
                """INSERT INTO executions (run_id, tenant, agent_key, status, enqueued_at, finished_at)
                   VALUES ('planted', $1, 'noop', 'succeeded', now(), now())""",
                b,
            )
    assert await pool.fetchval("SELECT error FROM executions WHERE run_id = $1", theirs) is None
    async with tenant_scope(app, ALL_TENANTS) as conn:
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE tenant = ANY($1)", [a, b]) == 2


async def test_the_tenant_ends_with_its_transaction_and_unset_sees_nothing(
    pool: asyncpg.Pool, app: asyncpg.Pool
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    run_id = await _execution(pool, tenant)
    async with app.acquire() as conn:  # one connection throughout, never handed back between
        async with tenant_transaction(conn, tenant):
            assert await conn.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 1
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 0
        assert await conn.fetchval("SELECT count(*) FROM executions") == 0
    # And through the pool, whose connection comes back reset.
    async with tenant_scope(app, tenant) as conn:
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 1
    assert await app.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 0


async def test_tokens_are_found_by_hash_without_a_tenant_and_not_once_revoked(
    pool: asyncpg.Pool, app: asyncpg.Pool
) -> None:
    secret = f"s-{uuid.uuid4().hex}"
    async with tenant_scope(app, ALL_TENANTS) as conn:
        await register_token(conn, f"t{uuid.uuid4().hex[:8]}", secret, "test")
    who = await authenticate(app, secret)  # no tenant set: only the definer function reads it
    assert who is not None and who.scope == "admin" and who.tenant is None
    assert await app.fetchval("SELECT count(*) FROM api_tokens") == 0  # the table itself stays shut
    stored = await pool.fetchval("SELECT token_hash FROM api_tokens WHERE id = $1", who.token_id)
    assert stored != secret.encode() and len(stored) == 32  # its hash, never the secret
    await pool.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = $1", who.token_id)
    assert await authenticate(app, secret) is None


async def _package(conn: asyncpg.Connection, name: str, tenant: str | None) -> None:
    await conn.execute(
        """INSERT INTO hub_packages (name, version, tenant, digest, size_bytes, object)
           VALUES ($1, '1.0.0', $2, $3, 1, $1)""",
        name, tenant, "0" * 64,
    )  # fmt: skip


async def test_hub_packages_public_to_every_tenant_private_to_their_own(app: asyncpg.Pool) -> None:
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    public, mine, theirs = (f"p{uuid.uuid4().hex[:10]}" for _ in range(3))
    async with tenant_scope(app, ALL_TENANTS) as conn:
        await _package(conn, public, None)
    async with tenant_scope(app, a) as conn:
        await _package(conn, mine, a)
    async with tenant_scope(app, b) as conn:
        await _package(conn, theirs, b)
    async with tenant_scope(app, a) as conn:
        seen = {r["name"] for r in await conn.fetch("SELECT name FROM hub_packages WHERE name = ANY($1)",
                                                    [public, mine, theirs])}  # fmt: skip
        assert seen == {public, mine}
        assert (
            await conn.execute("UPDATE hub_packages SET downloads = 9 WHERE name = $1", public) == "UPDATE 0"
        )
        assert await conn.execute("DELETE FROM hub_packages WHERE name = $1", public) == "DELETE 0"
    async with tenant_scope(app, a) as conn:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await _package(conn, f"p{uuid.uuid4().hex[:10]}", None)  # a tenant cannot publish publicly

"""Executions partitioned by month: each row in its month, one row per run however
its outcomes arrive (across months, replayed, racing), a row from a month not made
yet kept and moved in later, and no month readable around the parent's row security."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from agents.store.executions import get_execution, record_executions
from agents.store.partitions import ensure_partitions
from agents.store.tenancy import app_pool, tenant_scope
from mesh.queue.runs import ExecutionFinished, RunStatus


@pytest.fixture
async def app(pool: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    app = await app_pool(database_url, size=4)
    yield app
    await app.close()


def _event(run_id: str, finished_at: datetime, status: RunStatus = RunStatus.SUCCEEDED) -> ExecutionFinished:
    return ExecutionFinished(
        run_id=run_id, agent="noop", tenant="part", status=status, attempts=1,
        enqueued_at=finished_at - timedelta(seconds=1), finished_at=finished_at,
    )  # fmt: skip


async def _rows(pool: asyncpg.Pool, run_id: str) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT tableoid::regclass::text AS part, status FROM executions WHERE run_id = $1", run_id
    )
    return [(r["part"], r["status"]) for r in rows]


def _month(at: datetime) -> str:
    return f"executions_{at:%Y_%m}"


async def test_a_row_lands_in_its_month_and_months_ahead_exist(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    assert await ensure_partitions(pool) == 0  # the migration (or a gateway) made them already
    for ahead in range(4):
        month = (now.replace(day=1) + timedelta(days=32 * ahead)).replace(day=1)
        assert await pool.fetchval("SELECT to_regclass($1)", _month(month)) is not None, month
    run_id = f"p-{uuid.uuid4().hex[:10]}"
    await record_executions(pool, [_event(run_id, now)])
    assert await _rows(pool, run_id) == [(_month(now), "succeeded")]


async def test_a_later_outcome_in_another_month_replaces_the_row_and_an_older_one_changes_nothing(
    pool: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    earlier = now.replace(day=1) - timedelta(days=3)  # last month
    await pool.fetchval("SELECT af_ensure_execution_partitions($1, 0)", earlier)
    run_id = f"p-{uuid.uuid4().hex[:10]}"
    await record_executions(pool, [_event(run_id, earlier, RunStatus.FAILED)])
    assert await _rows(pool, run_id) == [(_month(earlier), "failed")]
    await record_executions(pool, [_event(run_id, now)])  # replayed from the DLQ, succeeded this month
    assert await _rows(pool, run_id) == [(_month(now), "succeeded")]
    await record_executions(pool, [_event(run_id, earlier, RunStatus.FAILED)])  # the old event again
    assert await _rows(pool, run_id) == [(_month(now), "succeeded")]
    both = f"p-{uuid.uuid4().hex[:10]}"  # both outcomes in one batch, either order
    await record_executions(pool, [_event(both, earlier, RunStatus.FAILED), _event(both, now)])
    assert await _rows(pool, both) == [(_month(now), "succeeded")]
    await record_executions(pool, [_event(both, now), _event(both, earlier, RunStatus.FAILED)])
    assert await _rows(pool, both) == [(_month(now), "succeeded")]
    found = await get_execution(pool, run_id)
    assert found is not None and found["status"] == "succeeded"


async def test_two_writers_racing_on_one_run_leave_one_row_the_newest(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    runs = [f"race-{uuid.uuid4().hex[:10]}" for _ in range(30)]
    older = [_event(r, now - timedelta(seconds=5), RunStatus.FAILED) for r in runs]
    newer = [_event(r, now) for r in runs]
    for i in range(len(runs)):  # each pair at once, in both orders
        first, second = (older[i], newer[i]) if i % 2 else (newer[i], older[i])
        await asyncio.gather(record_executions(pool, [first]), record_executions(pool, [second]))
    counts = await pool.fetch(
        """SELECT run_id, count(*) AS n, max(status) AS status FROM executions
           WHERE run_id = ANY($1) GROUP BY 1""",
        runs,
    )
    assert {(r["n"], r["status"]) for r in counts} == {(1, "succeeded")} and len(counts) == len(runs)


async def test_a_row_from_a_month_not_made_yet_is_kept_and_moved_in_when_it_is(pool: asyncpg.Pool) -> None:
    far = datetime(2031, 7, 15, tzinfo=UTC)  # a clock years ahead
    run_id = f"p-{uuid.uuid4().hex[:10]}"
    await record_executions(pool, [_event(run_id, far)])
    assert await _rows(pool, run_id) == [("executions_default", "succeeded")]
    made = await pool.fetchval("SELECT af_ensure_execution_partitions($1, 0)", far)
    assert made >= 1
    assert await _rows(pool, run_id) == [("executions_2031_07", "succeeded")]
    await pool.execute("DROP TABLE executions_2031_07")  # leave the months as the other tests expect


async def test_the_application_reaches_months_only_through_the_parent(
    pool: asyncpg.Pool, app: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    run_id = f"p-{uuid.uuid4().hex[:10]}"
    await record_executions(pool, [_event(run_id, now)])
    async with tenant_scope(app, "part") as conn:
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 1
    async with tenant_scope(app, "someone-else") as conn:
        assert await conn.fetchval("SELECT count(*) FROM executions WHERE run_id = $1", run_id) == 0
    for part in (_month(now), "executions_default"):
        async with tenant_scope(app, "someone-else") as conn:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval(f"SELECT count(*) FROM {part}")
    assert await ensure_partitions(app) == 0  # the application may make months (as the owner)

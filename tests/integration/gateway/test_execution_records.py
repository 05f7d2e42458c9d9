"""The permanent record in PostgreSQL keeps what the finished event carries, attempt errors
included, and the API serves it once the 24 h run state in KV is gone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from agents.store.executions import EXECUTIONS_MENDED, get_execution, record_executions
from mesh.deadletters import AttemptError
from mesh.envelope import new_id, utcnow
from mesh.queue.runs import ExecutionFinished, RunStatus


def _failed_run(replay: int = 0) -> ExecutionFinished:
    started = utcnow()
    return ExecutionFinished(
        run_id=new_id(), agent="fuel-combustion", tenant="acme", status=RunStatus.FAILED, attempts=3,
        error="RuntimeError: meter offline",
        errors=[AttemptError(attempt=n, error=f"meter offline ({n})", error_type="RuntimeError")
                for n in (1, 2, 3)],
        input={"fuel": "diesel"}, routing_key="site-7", priority=1, idempotency_key="k-9",
        replay=replay, enqueued_at=started - timedelta(seconds=5), started_at=started,
        finished_at=started + timedelta(seconds=1), duration_ms=1000.0,
    )  # fmt: skip


async def test_attempt_errors_and_routing_facts_are_stored_and_read_back(pool: asyncpg.Pool) -> None:
    event = _failed_run()
    await record_executions(pool, [event])
    row = await get_execution(pool, event.run_id)
    assert row is not None
    assert [AttemptError.model_validate(e) for e in row["errors"]] == event.errors
    assert (row["routing_key"], row["priority"], row["idempotency_key"], row["replay"]) == (
        "site-7", 1, "k-9", 0,
    )  # fmt: skip


async def test_a_later_replay_outcome_replaces_the_failure_and_its_errors(pool: asyncpg.Pool) -> None:
    failed = _failed_run()
    await record_executions(pool, [failed])
    replayed = failed.model_copy(
        update={"status": RunStatus.SUCCEEDED, "attempts": 1, "error": None, "errors": [],
                "result": {"co2e_kg": 1.0}, "replay": 1,
                "finished_at": failed.finished_at + timedelta(minutes=5)}
    )  # fmt: skip
    await record_executions(pool, [replayed, failed])  # the old event again changes nothing
    row = await get_execution(pool, failed.run_id)
    assert row is not None
    assert (row["status"], row["errors"], row["replay"]) == ("succeeded", [], 1)


async def test_the_api_serves_the_error_history_from_the_database(
    api: TestClient[Any, Any], pool: asyncpg.Pool
) -> None:
    event = _failed_run()
    await record_executions(pool, [event])  # no KV record: as after its 24 h expiry
    resp = await api.get(f"/api/v1/runs/{event.run_id}")
    assert resp.status == 200
    view = await resp.json()
    assert view["status"] == "failed" and view["attempts"] == 3
    assert [e["error"] for e in view["errors"]] == [
        "meter offline (1)",
        "meter offline (2)",
        "meter offline (3)",
    ]


async def test_an_event_the_database_refuses_is_mended_and_does_not_hold_back_its_batch(
    pool: asyncpg.Pool,
) -> None:
    good, bad = _failed_run(), _failed_run()
    bad = bad.model_copy(update={"result": {"note": "meter\x00id"}, "error": "bad\x00byte"})
    counted = EXECUTIONS_MENDED.labels("mended")._value.get()
    mended = await record_executions(pool, [good, bad])
    assert mended == 1 and EXECUTIONS_MENDED.labels("mended")._value.get() == counted + 1
    assert (await get_execution(pool, good.run_id)) is not None
    row = await get_execution(pool, bad.run_id)
    assert row is not None
    assert row["result"] == {"note": "meter\ufffdid"} and row["error"] == "bad\ufffdbyte"
    assert await record_executions(pool, [good]) == 0  # a clean batch goes in one statement

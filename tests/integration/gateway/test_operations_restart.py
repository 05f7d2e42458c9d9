"""An operation survives its gateway: a gateway killed -9 midway leaves its operations
to the next one, which resumes those safe to run again and fails the others with the
reason; a gateway stopped in order hands back the first and fails the second. Never
is one left ``running``. Real gateways on the session's nats-server and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import gateway.operations
from agents.store.operations import OperationStatus, create_operation
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from gateway.operations import OperationRunner
from tests.helpers import eventually

from .operation_gateway import NOT_RESUMABLE, ONCE, RESUMABLE, slow_gateway

ROOT = Path(__file__).resolve().parents[3]


async def _operations(pool: asyncpg.Pool, ids: list[str]) -> dict[str, dict[str, Any]]:
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        rows = await conn.fetch("SELECT * FROM operations WHERE id = ANY($1)", ids)
        events = await conn.fetch(
            "SELECT operation_id, message FROM operation_events WHERE operation_id = ANY($1) ORDER BY seq",
            ids,
        )
    found = {r["id"]: {**dict(r), "said": []} for r in rows}
    for e in events:
        found[e["operation_id"]]["said"].append(e["message"])
    return found


async def _all_finished(pool: asyncpg.Pool, ids: list[str]) -> dict[str, dict[str, Any]]:
    async def finished() -> dict[str, dict[str, Any]] | None:
        ops = await _operations(pool, ids)
        return ops if all(op["finished_at"] is not None for op in ops.values()) else None

    return await eventually(finished, 20, "every operation ended")


async def test_the_operations_of_a_gateway_killed_midway_are_resumed_or_failed_by_the_next_one(
    nats_url: str, database_url: str, pool: asyncpg.Pool
) -> None:
    killed = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.gateway.operation_gateway", nats_url, database_url, "60",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert killed.stdout is not None
        ids = json.loads(await asyncio.wait_for(killed.stdout.readline(), 60))

        async def midway() -> dict[str, dict[str, Any]] | None:
            ops = await _operations(pool, ids)
            return (
                ops if all(op["status"] == "running" and op["progress"] >= 5 for op in ops.values()) else None
            )

        before = await eventually(midway, 20, "both operations got going")
    finally:
        killed.kill()  # SIGKILL: nothing of it says goodbye
        await killed.wait()
    holder = before[ids[0]]["owner"]
    assert holder.startswith("gateway@") and {op["owner"] for op in before.values()} == {holder}
    left = await _operations(pool, ids)
    assert {op["status"] for op in left.values()} == {"running"}  # as the killed process left them

    nxt = slow_gateway(0.01)
    async with nxt.running(nats_url, database_url, token=None):
        assert nxt.operations is not None
        ops = await _all_finished(pool, ids)
        resumed, once = ops[ids[0]], ops[ids[1]]
        assert (resumed["kind"], once["kind"]) == (RESUMABLE, ONCE)
        # Safe to run again: run again from the start, by the next gateway, to success.
        assert (resumed["status"], resumed["attempts"], resumed["owner"]) == (
            "succeeded",
            2,
            nxt.operations.holder,
        )
        assert json.loads(resumed["result"]) == {"steps": 60, "attempt": 2}
        said = f"resumed by {nxt.operations.holder}: gateway {holder} stopped while it ran"
        assert said in resumed["said"] and resumed["said"][-1] == "succeeded"
        # Not safe to run again: failed, saying why.
        assert (once["status"], once["attempts"]) == ("failed", 1)
        assert once["error"] == f"gateway {holder} stopped while it ran; {NOT_RESUMABLE}"
        assert once["said"][-1] == f"failed: {once['error']}"


async def test_a_gateway_stopped_in_order_hands_back_what_can_resume_and_fails_the_rest(
    nats_url: str, database_url: str, pool: asyncpg.Pool
) -> None:
    first = slow_gateway(0.1)
    async with first.running(nats_url, database_url, token=None):
        assert first.operations is not None
        ids = []
        for kind in (RESUMABLE, ONCE):
            op, _ = await first.operations.submit(kind, target="t", request={"steps": 60}, tenant=None,
                                                  created_by="test")  # fmt: skip
            ids.append(op.id)

        async def going() -> bool:
            ops = await _operations(pool, ids)
            return all(op["progress"] >= 5 for op in ops.values())

        await eventually(going, 20, "both operations got going")
        holder = first.operations.holder
    ops = await _operations(pool, ids)
    handed_back, once = ops[ids[0]], ops[ids[1]]
    assert (handed_back["status"], handed_back["owner"]) == ("queued", None)
    assert handed_back["said"][-1] == f"gateway {holder} stopped: queued again"
    assert (
        once["status"] == "failed"
        and once["error"] == f"gateway {holder} stopped while it ran; {NOT_RESUMABLE}"
    )

    nxt = slow_gateway(0.01)
    async with nxt.running(nats_url, database_url, token=None):  # taken at its start: it has no owner
        ops = await _all_finished(pool, ids)
        assert (ops[ids[0]]["status"], ops[ids[0]]["attempts"]) == ("succeeded", 2)
        assert ops[ids[1]]["status"] == "failed"  # ended already: nobody touched it again


async def test_an_end_the_database_did_not_take_is_written_at_a_later_heartbeat(
    nats_url: str, database_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = gateway.operations.advance
    refused: list[str] = []

    async def away_once(conn: asyncpg.Connection, op_id: str, owner: str, **what: Any) -> Any:
        if what.get("status") == OperationStatus.SUCCEEDED and not refused:
            refused.append(op_id)
            raise ConnectionResetError("the database went away")
        return await real(conn, op_id, owner, **what)

    monkeypatch.setattr(gateway.operations, "advance", away_once)
    runs = slow_gateway(0.01)
    async with runs.running(nats_url, database_url, token=None):
        assert runs.operations is not None
        op, _ = await runs.operations.submit(RESUMABLE, target="t", request={"steps": 3}, tenant=None,
                                             created_by="test")  # fmt: skip
        ops = await _all_finished(pool, [op.id])
    assert refused == [op.id] and ops[op.id]["status"] == "succeeded"  # not left running


async def test_finished_operations_past_their_keep_are_deleted_with_their_history_and_key(
    pool: asyncpg.Pool,
) -> None:
    """Unfinished operations are kept however old; a deleted one's idempotency key is free again."""
    key = uuid.uuid4().hex
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        made = {
            name: (await create_operation(conn, kind="test.prune", target=name, tenant="acme", request={},
                                          created_by="test", owner="elsewhere",
                                          idempotency_key=key if name == "old" else None))[0].id
            for name in ("old", "old-unfinished", "recent")
        }  # fmt: skip
        await conn.execute(
            """UPDATE operations SET status = 'succeeded', finished_at = now() - interval '40 days',
                                     created_at = now() - interval '41 days' WHERE id = $1""",
            made["old"],
        )
        await conn.execute(
            "UPDATE operations SET created_at = now() - interval '90 days' WHERE id = $1",
            made["old-unfinished"],
        )
        await conn.execute(
            "UPDATE operations SET status = 'failed', finished_at = now() - interval '1 day' WHERE id = $1",
            made["recent"],
        )
    runner = OperationRunner(pool, "pruner", keep_s=30 * 86400.0)
    assert await runner.prune() >= 1
    ops = await _operations(pool, list(made.values()))
    assert set(ops) == {made["old-unfinished"], made["recent"]}
    async with tenant_scope(pool, ALL_TENANTS) as conn:
        events = "SELECT count(*) FROM operation_events WHERE operation_id = $1"
        assert await conn.fetchval(events, made["old"]) == 0
        again, new = await create_operation(conn, kind="test.prune", target="old", tenant="acme",
                                            request={}, created_by="test", owner="elsewhere",
                                            idempotency_key=key)  # fmt: skip
    assert new and again.id != made["old"]
    assert await runner.prune() == 0  # nothing else is past its keep

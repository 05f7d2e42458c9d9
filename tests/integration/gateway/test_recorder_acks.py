"""The PostgreSQL recorder acks an event only after the batch holding it is committed.

The database is held still with a lock on ``executions``; the recorder's acks
are watched on the wire (a plain subscription to its consumer's ack subjects on
the same connection, so a flush orders them) and in the consumer's state.
"""

from __future__ import annotations

from datetime import timedelta

import asyncpg
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from agents.recorder import Recorder
from agents.store.executions import get_execution
from mesh import names
from mesh.envelope import CONTENT_TYPE, JSON, Envelope, encode, new_id, utcnow
from mesh.queue.runs import EXECUTION_FINISHED, ExecutionFinished, RunStatus
from tests.helpers import eventually

EVENTS = 20


def _finished() -> ExecutionFinished:
    started = utcnow()
    return ExecutionFinished(
        run_id=new_id(), agent="fuel-combustion", tenant="acme", status=RunStatus.SUCCEEDED,
        attempts=1, result={"co2e_kg": 1.0}, enqueued_at=started - timedelta(seconds=1),
        started_at=started, finished_at=started, duration_ms=1.0,
    )  # fmt: skip


async def _publish(js: JetStreamContext, event: ExecutionFinished) -> None:
    env = Envelope(type=EXECUTION_FINISHED, source=event.agent, payload=event.model_dump(mode="json"))
    await js.publish(
        names.finished_subject(event.agent, event.run_id), encode(env), headers={CONTENT_TYPE: JSON}
    )


async def _consumer(js: JetStreamContext) -> ConsumerInfo:
    return await js.consumer_info(names.STREAM_EVENTS, names.CONSUMER_RECORDER)


async def _settle_backlog(nc: Client, js: JetStreamContext, pool: asyncpg.Pool) -> None:
    """Let a recorder catch up on what earlier tests left, so the next one starts empty."""
    recorder = Recorder(nc, js, pool, poll_s=0.2)
    await recorder.start()
    try:

        async def caught_up() -> bool:
            info = await _consumer(js)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(caught_up, 30, "the recorder's backlog recorded and acked")
    finally:
        await recorder.stop()


async def _insert_waits_on_the_lock(locker: asyncpg.Connection) -> bool:
    waiting = await locker.fetchval(
        """SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
           WHERE c.relname = 'executions' AND NOT l.granted"""
    )
    return bool(waiting)


async def test_recorder_acks_nothing_until_its_batch_is_committed(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str
) -> None:
    js = mesh_js
    await _settle_backlog(nc, js, pool)
    before = await _consumer(js)  # everything delivered so far is acked
    # `delivered` counts in the read loop, so after a flush it includes every ack sent before.
    acks = await nc.subscribe(f"$JS.ACK.{names.STREAM_EVENTS}.{names.CONSUMER_RECORDER}.>")
    locker = await asyncpg.connect(database_url)
    lock = locker.transaction()
    recorder = Recorder(nc, js, pool, poll_s=0.2)
    try:
        await lock.start()
        await locker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        events = [_finished() for _ in range(EVENTS)]
        for event in events:
            await _publish(js, event)
        await recorder.start()  # its first pull takes all of them: one batch

        async def took_all_and_is_blocked() -> bool:
            info = await _consumer(js)
            took = info.delivered.consumer_seq - before.delivered.consumer_seq
            return took == EVENTS and await _insert_waits_on_the_lock(locker)

        await eventually(
            took_all_and_is_blocked, 30, f"the recorder taking {EVENTS} events, blocked on the lock"
        )
        await nc.flush()  # an ack the recorder sent before its insert has reached the server and us
        info = await _consumer(js)
        assert acks.delivered == 0, f"{acks.delivered} events acked before their batch was committed"
        assert info.num_ack_pending == EVENTS
        assert info.ack_floor.consumer_seq == before.ack_floor.consumer_seq

        await lock.rollback()

        async def all_acked() -> bool:
            info = await _consumer(js)
            return info.num_ack_pending == 0 and info.ack_floor.consumer_seq == info.delivered.consumer_seq

        await eventually(all_acked, 30, "every event acked once the lock is gone")
        for event in events:
            row = await get_execution(pool, event.run_id)
            assert row is not None and row["status"] == "succeeded", event.run_id
        await nc.flush()
        assert acks.delivered == EVENTS
    finally:
        await locker.close()  # ends the transaction, if an assertion left it open
        await recorder.stop()
        await acks.unsubscribe()


async def test_a_stopped_recorder_hands_its_unwritten_batch_back_at_once(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool, database_url: str
) -> None:
    js = mesh_js
    await _settle_backlog(nc, js, pool)
    before = await _consumer(js)
    locker = await asyncpg.connect(database_url)
    lock = locker.transaction()
    recorder = Recorder(nc, js, pool, poll_s=0.2)
    events = [_finished() for _ in range(5)]
    try:
        await lock.start()
        await locker.execute("LOCK TABLE executions IN ACCESS EXCLUSIVE MODE")
        for event in events:
            await _publish(js, event)
        await recorder.start()

        async def holds_them_blocked() -> bool:
            info = await _consumer(js)
            took = info.delivered.consumer_seq - before.delivered.consumer_seq
            return took == len(events) and await _insert_waits_on_the_lock(locker)

        await eventually(holds_them_blocked, 30, "the recorder holding the batch, blocked on the lock")
        await recorder.stop(timeout=5)  # mid-batch
        await lock.rollback()
        # Another recorder writes them within 30 s, far inside the consumer's 60 s
        # ack wait: the stopped one handed its batch back (nak), it did not just drop it.
        # (A nak'ed message counts as ack-pending until it is delivered again.)
        await _settle_backlog(nc, js, pool)
        for event in events:
            assert await get_execution(pool, event.run_id) is not None, event.run_id
    finally:
        await locker.close()
        await recorder.stop()

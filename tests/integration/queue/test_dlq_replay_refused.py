"""A replay whose run-state write the server refuses says so: only a lost
compare-and-set (10071, someone else wrote the state) is expected and passed
over; any other refusal used to be swallowed too, and the dead letter deleted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.errors import APIError

from mesh import names
from mesh.errors import WRONG_LAST_SEQUENCE
from mesh.queue import dlq
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique

from .conftest import Own
from .test_worker_basics import wait_for_run


async def test_a_refused_run_state_write_fails_the_replay_and_keeps_the_dead_letter(own: Own) -> None:
    nc, js = own.nc, own.js
    agent = unique("refused")

    async def handler(ctx: TaskContext) -> Any:
        raise RuntimeError("always")

    async with TaskQueue(nc, js) as queue:
        run_id = (await queue.enqueue(TaskSpec(agent, {}))).run_id
        config = AgentQueueConfig(agent, max_attempts=1)
        worker = TaskWorker(nc, js, {agent: (config, handler)}, idle_poll_s=0.2)
        await worker.start()
        try:
            await wait_for_run(js, run_id, RunStatus.FAILED)
            async with asyncio.timeout(10):
                while not await dlq.count(js, origin="tasks", name=agent):
                    await asyncio.sleep(0.02)
        finally:
            await worker.stop(2)  # the replayed task is to stay queued
    [letter] = await dlq.list_dead_letters(js, name=agent)

    runs = names.kv_stream(names.BUCKET_RUNS)
    bucket = (await js.stream_info(runs)).config
    limit, bucket.max_msg_size = bucket.max_msg_size, 64  # a run record is larger: refused (10054)
    await js.update_stream(bucket)
    try:
        with pytest.raises(APIError) as refused:
            await dlq.replay(js, letter.seq)
        assert refused.value.err_code not in WRONG_LAST_SEQUENCE
    finally:
        bucket.max_msg_size = limit
        await js.update_stream(bucket)
    assert await dlq.count(js, origin="tasks", name=agent) == 1, "the dead letter went with the run state"

    # Replayed again: one task (the republish is deduplicated), its state written.
    assert await dlq.replay(js, letter.seq) == run_id
    state = await get_run(js, run_id)
    assert state is not None and state.status == RunStatus.QUEUED and state.replay == 1
    subject = names.task_subject(agent, 2)
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=subject)
    assert (info.state.subjects or {}).get(subject) == 1
    assert await dlq.count(js, origin="tasks", name=agent) == 0

"""A write JetStream answers 503 (no server of the stream took it: on a cluster,
while the stream elects a leader) stored nothing, so the producer sends it
again, paced, for ``patience_s``; then :class:`StreamUnavailable` (the API's
503). Here the streams are deleted and re-created on one real server: the
same 503 an election gives, on demand. Each test owns its server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.errors import StreamUnavailable
from mesh.provision import provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import get_run
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually, unique


@pytest.fixture
async def own_js(tmp_path: Path) -> AsyncIterator[JetStreamContext]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url, name="stream-unavailable-test")
    try:
        js = await jetstream(nc)
        await provision(js)
        yield js
    finally:
        await nc.close()
        server.stop()


def _count_requests(queue: TaskQueue) -> Counter[str]:
    """Requests the producer sends, by their subject's second token (``tasks``, the bucket)."""
    sent: Counter[str] = Counter()
    request = queue.pipeline.request

    def counted(subject: str, *args: Any, **kwargs: Any) -> Any:
        sent[subject.split(".")[1]] += 1
        return request(subject, *args, **kwargs)

    queue.pipeline.request = counted  # type: ignore[method-assign]
    return sent


@pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "idempotency-key"])
async def test_an_enqueue_answered_503_is_sent_again_until_the_stream_is_back(
    own_js: JetStreamContext, keyed: bool
) -> None:
    js = own_js
    agent = unique("unavailable")
    async with TaskQueue(js._nc, js, patience_s=30) as queue:
        sent = _count_requests(queue)
        await js.delete_stream(names.STREAM_TASKS)
        spec = TaskSpec(agent=agent, input={"n": 1}, idempotency_key="k-1" if keyed else None)
        enqueue = asyncio.create_task(queue.enqueue(spec))
        await eventually(lambda: sent["tasks"] >= 3, 10, "the task publish answered 503 and sent again")
        assert not enqueue.done()
        await provision(js)  # the stream is back (as a new leader would be)
        done = await asyncio.wait_for(enqueue, 30)
    info = await js.stream_info(names.STREAM_TASKS, subjects_filter=names.task_subject(agent, "*"))
    assert info.state.messages == 1  # stored once, however often it was sent
    record = await get_run(js, done.run_id)
    assert record is not None and record.status.value == "queued"


async def test_a_run_record_answered_503_is_written_once_the_bucket_is_back(own_js: JetStreamContext) -> None:
    js = own_js
    agent = unique("unavailable")
    async with TaskQueue(js._nc, js, patience_s=30) as queue:
        sent = _count_requests(queue)
        await js.delete_stream(names.kv_stream(names.BUCKET_RUNS))
        enqueue = asyncio.create_task(queue.enqueue(TaskSpec(agent=agent, input={"n": 1})))
        await eventually(
            lambda: sent[names.BUCKET_RUNS] >= 3, 10, "the run record's write answered 503 and sent again"
        )
        assert sent["tasks"] == 1 and not enqueue.done()
        await provision(js)
        done = await asyncio.wait_for(enqueue, 30)
    record = await get_run(js, done.run_id)
    assert record is not None and record.status.value == "queued" and record.seq is not None


async def test_a_stream_that_stays_unavailable_is_a_clear_refusal_with_nothing_stored(
    own_js: JetStreamContext,
) -> None:
    js = own_js
    async with TaskQueue(js._nc, js, patience_s=0.5) as queue:
        await js.delete_stream(names.STREAM_TASKS)
        with pytest.raises(StreamUnavailable) as refused:
            await queue.enqueue(TaskSpec(agent=unique("unavailable"), input={}))
        assert refused.value.status == 503
        assert "nothing was stored" in str(refused.value) and "retry" in str(refused.value)
        with pytest.raises(StreamUnavailable):
            await queue.enqueue_batch([TaskSpec(agent=unique("unavailable"), input={})] * 3)

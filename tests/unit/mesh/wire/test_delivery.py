"""Per-delivery machinery of durable subscriptions, without a server: ack-subject
parsing and the shared handler deadline timer."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.errors import NotJSMessageError

from mesh.wire.delivery import Deadlines
from mesh.wire.protocol import ack_subject, delivery_of

COUNTS = st.integers(min_value=0, max_value=2**63 - 1)


@given(COUNTS, COUNTS, COUNTS, COUNTS, COUNTS, st.sampled_from(["_", "hub"]), st.booleans())
def test_delivery_facts_match_nats_py_metadata_for_both_ack_subject_layouts(
    delivered: int, stream_seq: int, consumer_seq: int, ts: int, pending: int, domain: str, v2: bool
) -> None:
    tail = f"{delivered}.{stream_seq}.{consumer_seq}.{ts}.{pending}"
    reply = (
        f"$JS.ACK.{domain}.ACCHASH.AF_CHANNELS.ch_x.{tail}.r4nd0m"
        if v2
        else f"$JS.ACK.AF_CHANNELS.ch_x.{tail}"
    )
    msg = Msg(None, subject="af.ch.x", reply=reply)  # type: ignore[arg-type]
    meta = msg.metadata
    assert delivery_of(msg) == (meta.num_delivered or 1, meta.sequence.stream)


@pytest.mark.parametrize(
    ("reply", "consumer"),
    [
        ("$JS.ACK.AF_TASKS.tasks-x-p2.1.2.3.4.5", "$JS.ACK.AF_TASKS.tasks-x-p2"),
        (
            "$JS.ACK.hub.ACCHASH.AF_TASKS.tasks-x-p2.1.2.3.4.5.r4nd0m",
            "$JS.ACK.hub.ACCHASH.AF_TASKS.tasks-x-p2",
        ),
        ("$JS.ACK.hub.ACCHASH.AF_TASKS.tasks-x-p2.1.2.3.4.5", "$JS.ACK.hub.ACCHASH.AF_TASKS.tasks-x-p2"),
        ("$JS.ACK.AF_TASKS.tasks-x-p2.1.2.3.4.5.6", None),  # ten tokens: neither layout
        ("$JS.ACK.AF_TASKS.tasks-x-p2.one.2.3.4.5", None),
        ("_INBOX.abc.1.2.3.4.5.6.7", None),
        ("$JS.API.AF_TASKS.tasks-x-p2.1.2.3.4.5", None),
    ],
)
def test_the_consumer_of_an_ack_subject_groups_acks_of_one_consumer(reply: str, consumer: str | None) -> None:
    parsed = ack_subject(reply)
    assert (parsed.consumer if parsed else None) == consumer


def test_delivery_facts_of_a_message_that_is_not_a_jetstream_delivery_raise_as_nats_py_does() -> None:
    with pytest.raises(NotJSMessageError):
        delivery_of(Msg(None, subject="x", reply="_INBOX.abc"))  # type: ignore[arg-type]


async def test_deadline_cancels_the_handler_past_it_and_spares_the_quick_ones() -> None:
    deadlines = Deadlines(0.05)

    async def handler(key: int, work: asyncio.Future[None]) -> str:
        deadlines.start(key)
        try:
            try:
                await work
            finally:
                deadlines.finish(key)
        except asyncio.CancelledError:
            if not deadlines.expired(key):
                raise
            return "timed out"
        return "done"

    loop = asyncio.get_running_loop()
    quick: asyncio.Future[None] = loop.create_future()
    quick.set_result(None)
    assert await handler(1, quick) == "done"
    hung = asyncio.create_task(handler(2, loop.create_future()))
    assert await hung == "timed out"
    assert hung.cancelling() == 0  # the deadline's cancellation was undone
    deadlines.close()


async def test_a_cancellation_that_is_not_the_deadline_propagates() -> None:
    deadlines = Deadlines(30.0)
    started = asyncio.Event()

    async def handler() -> None:
        deadlines.start(1)
        started.set()
        try:
            try:
                await asyncio.get_running_loop().create_future()
            finally:
                deadlines.finish(1)
        except asyncio.CancelledError:
            assert not deadlines.expired(1)
            raise

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadlines.close()

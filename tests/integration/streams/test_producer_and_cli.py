"""The producer side, and what an operator sees with the NATS CLI."""

from __future__ import annotations

import asyncio
import uuid

import faust
import pytest
from faust.exceptions import ProducerSendError
from faust.types import TP
from nats.aio.client import Client
from nats.js import JetStreamContext

from streams import naming
from streams.partitioner import partition_for
from streams.publisher import Publisher
from streams.topics import TopicRegistry
from tests.helpers import eventually


async def test_records_are_readable_on_documented_subjects(
    nats_url: str, nc: Client, js: JetStreamContext
) -> None:
    app_id = f"cli-{uuid.uuid4().hex[:6]}"
    topic = f"{app_id}-orders"
    app = faust.App(app_id, broker=nats_url, topic_partitions=4)
    producer = app.producer
    await producer.start()
    try:
        await producer.create_topic(topic, 4, 1)
        seen: asyncio.Queue = asyncio.Queue()

        async def on_msg(msg) -> None:  # what `nats sub 'faust.<topic>.>'` prints
            await seen.put(msg)

        sub = await nc.subscribe(f"faust.{naming.escape(topic)}.>", cb=on_msg)
        meta = await producer.send_and_wait(
            topic, b"user-7", b'{"qty": 3}', None, 1700000000.5, [("trace", b"abc")]
        )
        msg = await asyncio.wait_for(seen.get(), 5)
        await sub.unsubscribe()
    finally:
        await producer.stop()

    p = partition_for(b"user-7", 4)
    assert meta.partition == p and meta.topic_partition.partition == p
    assert msg.subject == f"faust.{topic}.{p}"
    assert msg.data == b'{"qty": 3}'
    assert msg.headers["Faust-Key"] == "user-7"
    assert msg.headers["Faust-Ts"] == "1700000000.5"
    stored = await js.get_msg(naming.stream_name(topic, p), meta.offset)
    assert stored.data == b'{"qty": 3}'  # offset == stream sequence


async def test_send_without_wait_then_flush_stores_every_record(nats_url: str, js: JetStreamContext) -> None:
    app_id = f"fl-{uuid.uuid4().hex[:6]}"
    topic = f"{app_id}-t"
    app = faust.App(app_id, broker=nats_url)
    producer = app.producer
    await producer.start()
    try:
        await producer.create_topic(topic, 2, 1)
        futures = [await producer.send(topic, None, b"x", i % 2, None, None) for i in range(500)]
        await producer.flush()
        assert all(f.done() for f in futures)
    finally:
        await producer.stop()
    counts = [(await js.stream_info(naming.stream_name(topic, p))).state.messages for p in range(2)]
    assert counts == [250, 250]


async def test_send_soon_records_keep_their_order_and_report_their_offsets(
    nats_url: str, js: JetStreamContext
) -> None:
    # Table changelogs go through ``Topic.send_soon``; the driver publishes
    # them without Faust's buffer task, and Faust's callbacks still run.
    app_id = f"ss-{uuid.uuid4().hex[:6]}"
    app = faust.App(app_id, broker=nats_url)
    topic = app.topic(f"{app_id}-changes", partitions=1, key_serializer="raw", value_serializer="raw")
    producer = app.producer
    await producer.start()
    try:
        await topic.declare()
        sent: list[int] = []
        futures = [
            topic.send_soon(
                key=f"k{i}".encode(),
                value=str(i).encode(),
                partition=0,
                callback=lambda fut: sent.append(fut.result().offset),
            )
            for i in range(300)
        ]
        await producer.flush()
        offsets = [(await f).offset for f in futures]
    finally:
        await producer.stop()
    assert offsets == list(range(1, 301))
    assert sorted(sent) == offsets
    stream = naming.stream_name(topic.get_topic_name(), 0)
    assert [(await js.get_msg(stream, seq)).data for seq in (1, 150, 300)] == [b"0", b"149", b"299"]


async def test_flush_waits_for_records_held_back_by_the_in_flight_bound(
    nc: Client, js: JetStreamContext
) -> None:
    topic = f"pb-{uuid.uuid4().hex[:6]}"
    await TopicRegistry(js).declare(topic, 1)
    publisher = Publisher(nc, max_in_flight=20, max_backlog=200)
    await publisher.start()
    try:
        subject, tp = naming.partition_subject(topic, 0), TP(topic, 0)
        futures = [publisher.submit(subject, str(i).encode(), None, tp, None) for i in range(500)]
        assert publisher.congested  # 500 queued >= max_backlog: the producer holds back
        await publisher.flush()
        assert all(f.done() for f in futures)  # including those still queued when flush began
        assert [f.result().offset for f in futures] == list(range(1, 501))
        assert not publisher.congested
        await asyncio.wait_for(publisher.wait_uncongested(), 1)
    finally:
        await publisher.stop()
    assert publisher.take_failure() is None


async def test_a_record_no_stream_stores_fails_once_the_publishers_patience_is_spent(nc: Client) -> None:
    publisher = Publisher(nc, patience_s=0.5)
    await publisher.start()
    subject = f"streams-nowhere.{uuid.uuid4().hex[:6]}"
    future = publisher.submit(subject, b"x", None, TP("t", 0), None)
    await asyncio.wait_for(publisher.flush(), 5)
    await publisher.stop()
    with pytest.raises(ProducerSendError) as info:
        future.result()
    assert str(info.value).startswith(f"no JetStream server took the write to 1 record(s) for {subject!r}")
    assert "nothing was stored: retry" in str(info.value)
    assert publisher.take_failure() is info.value


@pytest.mark.parametrize("compacted", [True, False], ids=["changelog", "plain"])
async def test_records_answered_503_are_sent_again_in_order_once_the_stream_is_back(
    nc: Client, js: JetStreamContext, compacted: bool
) -> None:
    """As while a stream elects a leader: the stream is deleted under the
    publisher (every record then gets a 503) and created again. Every record is
    stored, and the last value of each key is the last one submitted."""
    topic = f"pr-{uuid.uuid4().hex[:6]}"
    registry = TopicRegistry(js)
    await registry.declare(topic, 1, compacting=compacted)
    config = (await js.stream_info(naming.stream_name(topic, 0))).config
    keys = [f"key-{i}".encode() for i in range(5)]

    def subject(key: bytes) -> str:
        return naming.key_subject(topic, 0, key) if compacted else naming.partition_subject(topic, 0)

    publisher = Publisher(nc, patience_s=30)
    await publisher.start()
    try:
        first = [
            publisher.submit(subject(keys[i % 5]), b"%d" % i, None, TP(topic, 0), None) for i in range(50)
        ]
        await asyncio.wait_for(asyncio.gather(*first), 10)
        await js.delete_stream(config.name)
        later = [
            publisher.submit(subject(keys[i % 5]), b"%d" % i, None, TP(topic, 0), None)
            for i in range(50, 200)
        ]
        await eventually(lambda: publisher._patience is not None, 10, "records answered 503 and held")
        assert not any(f.done() for f in later)
        await js.add_stream(config)
        await asyncio.wait_for(publisher.flush(), 30)
    finally:
        await publisher.stop()
    assert publisher.take_failure() is None
    assert all(f.exception() is None for f in later)
    info = await js.stream_info(config.name)
    assert info.state.last_seq == 150  # the new stream took every later record once
    if compacted:
        for i, key in enumerate(keys):
            last = await js.get_last_msg(config.name, subject(key))
            assert last.data == b"%d" % (195 + i)  # the last value submitted for the key
    else:
        stored = [(await js.get_msg(config.name, seq)).data for seq in range(1, 151)]
        assert sorted(int(v) for v in stored) == list(range(50, 200))


async def test_a_record_the_stream_refuses_fails_with_the_servers_answer(
    nc: Client, js: JetStreamContext
) -> None:
    topic = f"pr-{uuid.uuid4().hex[:6]}"
    await TopicRegistry(js).declare(topic, 1)
    publisher = Publisher(nc)
    await publisher.start()
    subject, tp = naming.partition_subject(topic, 0), TP(topic, 0)
    stored = publisher.submit(subject, b"1", None, tp, None)
    refused = publisher.submit(subject, b"2", {"Nats-Expected-Last-Subject-Sequence": "7"}, tp, None)
    after = publisher.submit(subject, b"3", None, tp, None)
    await asyncio.wait_for(publisher.flush(), 5)
    await publisher.stop()
    assert stored.result().offset == 1 and after.result().offset == 2
    with pytest.raises(ProducerSendError) as info:
        refused.result()
    assert str(info.value).startswith(f"publish to {subject!r} rejected: b'" + '{"error":')
    assert "wrong last sequence" in str(info.value)
    assert publisher.take_failure() is info.value and publisher.take_failure() is None


async def test_a_record_without_an_ack_fails_after_the_publishers_ack_timeout(nc: Client) -> None:
    subject = f"streams-silent.{uuid.uuid4().hex[:6]}"
    sub = await nc.subscribe(subject)  # a responder that never answers: no 503, no ack
    publisher = Publisher(nc, ack_timeout_s=0.3, patience_s=0.2)
    await publisher.start()
    future = publisher.submit(subject, b"x", None, TP("t", 0), None)
    await asyncio.wait_for(publisher.flush(), 5)
    await publisher.stop()
    await sub.unsubscribe()
    with pytest.raises(ProducerSendError) as info:
        future.result()
    assert str(info.value) == f"no ack for {subject!r} within 0.3s"
    assert not publisher.congested and publisher.take_failure() is info.value


async def test_a_keys_last_value_stays_last_when_an_earlier_record_is_sent_again(
    nc: Client, js: JetStreamContext
) -> None:
    """Record A of a key goes unanswered (as to a node that dies) while the key's
    later record B is stored; A is sent again, and so is B after it, so the
    changelog's last value for the key is B's, not A's."""
    topic = f"pr-{uuid.uuid4().hex[:6]}"
    await TopicRegistry(js).declare(topic, 1, compacting=True)
    key_subject = naming.key_subject(topic, 0, b"k")
    black_hole = f"streams-silent.{uuid.uuid4().hex[:6]}"
    silent = await nc.subscribe(black_hole)  # takes A's first send and never answers
    publisher = Publisher(nc, ack_timeout_s=0.5, patience_s=10)
    send = publisher._pipeline.send
    lost_once: list[bytes] = []

    def first_a_goes_nowhere(subject: str, data: bytes, *args: object) -> object:
        if data == b"A" and not lost_once:
            lost_once.append(data)
            return send(black_hole, data, *args)  # type: ignore[arg-type]
        return send(subject, data, *args)  # type: ignore[arg-type]

    publisher._pipeline.send = first_a_goes_nowhere  # type: ignore[method-assign]
    await publisher.start()
    try:
        a = publisher.submit(key_subject, b"A", None, TP(topic, 0), None)
        b = publisher.submit(key_subject, b"B", None, TP(topic, 0), None)
        await asyncio.wait_for(publisher.flush(), 20)
    finally:
        await publisher.stop()
        await silent.unsubscribe()
    assert lost_once == [b"A"]
    assert a.result().offset == 2 and b.result().offset == 1  # B was stored first, then A
    assert (await js.get_last_msg(naming.stream_name(topic, 0), key_subject)).data == b"B"
    assert (await js.stream_info(naming.stream_name(topic, 0))).state.last_seq == 3  # B again
    assert publisher.take_failure() is None and not publisher._keys

"""How Kafka's offset assumptions are met on JetStream (see docs/streams.md)."""

from __future__ import annotations

import asyncio
import json
import uuid

from faust.types import TP
from nats.aio.client import Client
from nats.js import JetStreamContext
from streams_helpers import eventually

from streams import naming
from streams.offsets import OffsetStore
from streams.reader import PartitionReader
from streams.topics import TopicRegistry


def _topic() -> str:
    return f"ot-{uuid.uuid4().hex[:8]}"


async def test_declare_creates_one_stream_per_partition_and_keeps_the_first_declaration(
    js: JetStreamContext,
) -> None:
    topic = _topic()
    spec = await TopicRegistry(js).declare(topic, 3, retention_s=60)
    assert spec.partitions == 3
    for p in range(3):
        info = await js.stream_info(naming.stream_name(topic, p))
        assert info.config.subjects == [naming.partition_subject(topic, p)]
        assert info.config.max_age == 60
    again = await TopicRegistry(js).declare(topic, 8)  # a fresh registry: read from KV
    assert again.partitions == 3


async def test_empty_partition_reports_earliest_equal_to_highwater(js: JetStreamContext) -> None:
    topic = _topic()
    registry = TopicRegistry(js)
    await registry.declare(topic, 1)
    tp = TP(topic, 0)
    assert (await registry.bounds([tp]))[tp].earliest == (await registry.bounds([tp]))[tp].highwater == 1
    for i in range(5):
        await js.publish(naming.partition_subject(topic, 0), str(i).encode())
    b = (await registry.bounds([tp]))[tp]
    assert (b.earliest, b.highwater) == (1, 6)  # contiguous offsets 1..5
    await js.purge_stream(naming.stream_name(topic, 0))
    b = (await registry.bounds([tp]))[tp]
    assert b.earliest == b.highwater == 6  # emptied, offsets never reused


async def test_compaction_keeps_newest_per_key_and_the_last_offset_exists(js: JetStreamContext) -> None:
    topic = _topic()
    registry = TopicRegistry(js)
    await registry.declare(topic, 1, compacting=True)
    for key in [b"a", b"b", b"a", b"c", b"a"]:
        await js.publish(naming.key_subject(topic, 0, key), key)
    tp = TP(topic, 0)
    b = (await registry.bounds([tp]))[tp]
    assert (b.earliest, b.highwater) == (2, 6)  # seq 1 (a) compacted away; gaps at 3
    last = await js.get_msg(naming.stream_name(topic, 0), b.highwater - 1)
    assert last.data == b"a"  # recovery waits for exactly this offset: it must exist


async def test_committed_offsets_are_durable_per_group(js: JetStreamContext) -> None:
    group = f"g-{uuid.uuid4().hex[:6]}"
    tps = [TP("orders", 0), TP("orders", 1)]
    await OffsetStore(js, group).commit({tps[0]: 42}, generation=1)
    assert await OffsetStore(js, group).read(tps) == {tps[0]: 42, tps[1]: None}
    assert await OffsetStore(js, group + "x").read(tps) == {tps[0]: None, tps[1]: None}


async def test_reader_seeks_and_reports_position(nc: Client, js: JetStreamContext) -> None:
    topic = _topic()
    await TopicRegistry(js).declare(topic, 1)
    for i in range(1, 11):
        await js.publish(naming.partition_subject(topic, 0), str(i).encode())
    woke = asyncio.Event()
    reader = PartitionReader(nc, js, TP(topic, 0), woke.set, batch=4, max_buffered=8)
    try:
        reader.start(4)
        got: list[int] = []

        async def read_all() -> bool:
            got.extend(record[0] for record in reader.take(100))
            return len(got) >= 7

        await eventually(read_all, 10, "offsets 4..10")
        assert got == list(range(4, 11))
        assert reader.position() == 11
        assert reader.highwater_hint == 11
        reader.start(2)  # seek backwards: re-read
        got.clear()

        async def reread() -> bool:
            got.extend(record[0] for record in reader.take(100))
            return len(got) >= 9

        await eventually(reread, 10, "offsets 2..10 again")
        assert got == list(range(2, 11))
    finally:
        await reader.stop()


async def test_paused_reader_stops_fetching_at_its_buffer_bound(nc: Client, js: JetStreamContext) -> None:
    topic = _topic()
    await TopicRegistry(js).declare(topic, 1)
    await asyncio.gather(*[js.publish(naming.partition_subject(topic, 0), b"x") for _ in range(50)])
    # The reader's pull requests, seen on its own connection: a flush orders them before us.
    pulls = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{naming.stream_name(topic, 0)}.*")
    reader = PartitionReader(nc, js, TP(topic, 0), lambda: None, batch=8, max_buffered=16)
    try:
        reader.start(1)
        await eventually(lambda: len(reader.buffer) >= 16, 10, "buffer full")
        # The first round trip lets the reader act on its full buffer; the second
        # brings back any pull it sent meanwhile.
        await nc.flush()
        await nc.flush()
        asked = 0
        while pulls.pending_msgs:
            asked += json.loads((await pulls.next_msg()).data)["batch"]
        assert asked == 16  # no credit beyond the buffer's room, so nothing more can come
        assert len(reader.buffer) == 16
    finally:
        await reader.stop()
        await pulls.unsubscribe()


async def test_reader_whose_pull_goes_unanswered_recreates_its_consumer_at_the_next_offset(
    nc: Client, js: JetStreamContext
) -> None:
    topic = _topic()
    stream = naming.stream_name(topic, 0)
    await TopicRegistry(js).declare(topic, 1)
    for i in range(1, 11):
        await js.publish(naming.partition_subject(topic, 0), str(i).encode())
    reader = PartitionReader(nc, js, TP(topic, 0), lambda: None, batch=4, max_buffered=4, expires=0.2)
    # Something else listens on the pull subjects, so a pull to a vanished
    # consumer is not refused (503): it goes unanswered, as one the server forgot.
    listener = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*")
    try:
        reader.start(1)
        await eventually(lambda: len(reader.buffer) == 4, 10, "a full buffer: no pull open")
        (consumer,) = await js.consumers_info(stream)
        await js.delete_consumer(stream, consumer.name)  # no pull waits on it: nothing tells the reader
        got = [record[0] for record in reader.take(100)]

        def read_on() -> bool:
            got.extend(record[0] for record in reader.take(100))
            return len(got) >= 10

        await eventually(read_on, 15, "offsets 5..10 through a new consumer")
        assert got == list(range(1, 11))
    finally:
        await reader.stop()
        await listener.unsubscribe()

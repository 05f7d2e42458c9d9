"""Test helpers that talk to JetStream directly (never through the driver under test)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError

from streams import naming
from streams.partitioner import partition_for
from streams.records import decode_headers, encode_headers

KEYS = 1000


def key_of(i: int) -> bytes:
    return f"key-{i % KEYS:04d}".encode()


async def publish_events(
    js: JetStreamContext,
    topic: str,
    n: int,
    *,
    partitions: int = 4,
    timestamp_of: Callable[[int], float] | None = None,
    window: int = 2000,
) -> Counter[int]:
    """Publish ``n`` events the way a Faust producer would; returns events per partition."""
    per_partition: Counter[int] = Counter()
    pending: list[asyncio.Future[object]] = []
    for i in range(n):
        key = key_of(i)
        p = partition_for(key, partitions)
        per_partition[p] += 1
        ts = timestamp_of(i) if timestamp_of else None
        fut = await js.publish_async(
            naming.partition_subject(topic, p), b"1", headers=encode_headers(key, b"1", ts, None)
        )
        pending.append(fut)
        if len(pending) >= window:
            await asyncio.wait_for(asyncio.gather(*pending), 30)
            pending.clear()
    await asyncio.wait_for(asyncio.gather(*pending), 30)
    return per_partition


async def read_changelog(js: JetStreamContext, topic: str, partitions: int = 4) -> dict[int, dict[str, int]]:
    """The newest value per key of each changelog partition, read straight from the streams."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for p in range(partitions):
        stream = naming.stream_name(topic, p)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            continue
        if not info.state.messages:
            continue
        sub = await js.subscribe(
            naming.partition_subject(topic, p) + ".*", stream=stream, ordered_consumer=True
        )
        got = 0
        try:
            while got < info.state.messages:
                msg = await sub.next_msg(timeout=5)
                got += 1
                h = decode_headers(msg.headers)
                key = json.loads(h.key) if h.key else None
                if h.is_null:
                    out[p].pop(str(key), None)
                else:
                    out[p][str(key)] = json.loads(msg.data)
        finally:
            await sub.unsubscribe()
    return out


async def committed_offsets(
    js: JetStreamContext, group: str, topic: str, partitions: int = 4
) -> dict[int, int]:
    """Committed next-offset per partition (1 = nothing committed)."""
    kv = await js.key_value(naming.offsets_bucket(group))
    out = {}
    for p in range(partitions):
        try:
            entry = await kv.get(naming.offset_key(topic, p))
            out[p] = int(json.loads(entry.value)["offset"]) if entry.value else 1
        except KeyNotFoundError:
            out[p] = 1
    return out


def partition_of_key(key: str, partitions: int = 4) -> int:
    return partition_for(key.encode(), partitions)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

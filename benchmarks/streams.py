"""Streams benchmark: Faust-on-JetStream throughput against the raw ceiling.

Measured in one run against the same server:

``events_per_s``   events through a Faust agent that updates a table
                   (one worker, 4 partitions; events pre-published, timed from
                   worker-ready until the table has counted them all)
``ceiling_per_s``  the raw JetStream pull + ack rate of one Python client on the
                   same number of messages (``fetch(1000)`` + ``ack()``), the
                   stronger of the two raw clients (``ceiling_plain_per_s``:
                   plain nats-py; ``ceiling_lean_per_s``: with the parser our
                   connections, and so the Faust driver's, run on)
``ratio``          events_per_s / ceiling_per_s
``recovery_s``     time for a fresh worker to rebuild a table of
                   ``recovery_keys`` keys from its changelog
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from benchmarks.harness import RAW_CLIENTS, RawClient, raw_connect, raw_fetch, wait_until
from mesh.wire.connection import connect, jetstream
from streams import naming
from streams.partitioner import partition_for
from streams.records import encode_headers
from streams.topics import TopicRegistry

__all__ = ["bench_streams", "ceiling", "faust_worker"]

PARTITIONS = 4
KEYS = 1000


def _app(app_id: str, nats_url: str, datadir: str) -> tuple[faust.App, Any]:
    app = faust.App(
        app_id,
        broker=nats_url,
        datadir=f"{datadir}/{app_id}",  # Faust's default is ``<app id>-data`` in the working directory
        store="memory://",
        web_enabled=False,
        topic_partitions=PARTITIONS,
        table_standby_replicas=0,
        key_serializer="json",
    )
    events = app.topic(
        f"{app_id}-events",
        partitions=PARTITIONS,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    counts = app.Table("counts", default=int, partitions=PARTITIONS)

    @app.agent(events)
    async def count(stream: Any) -> None:
        async for key, _value in stream.items():
            counts[key.decode()] += 1

    return app, counts


@contextlib.asynccontextmanager
async def faust_worker(app: faust.App) -> AsyncIterator[None]:
    """Run ``app`` as an in-process Faust worker for the block (quiet: the output is JSON)."""
    # The worker's terminal spinner would write escape codes into the JSON output.
    worker = faust.Worker(app, loglevel="ERROR", quiet=True, redirect_stdouts=False, stdout=io.StringIO())
    task = asyncio.ensure_future(worker.start())
    try:
        yield
    finally:
        await worker.stop()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _publish(
    js: JetStreamContext, items: list[tuple[str, bytes, bytes, dict[str, str] | None]]
) -> None:
    pending = []
    for subject, _key, payload, headers in items:
        pending.append(await js.publish_async(subject, payload, headers=headers))
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def ceiling(nats_url: str, n: int, client: RawClient) -> float:
    """One raw nats-py client pulling and acking ``n`` messages: the ceiling a processor is compared with."""
    nc = await raw_connect(nats_url, f"bench-streams-ceiling-{client}", client)
    try:
        return await _pull_and_ack(nc.jetstream(), n)
    finally:
        await nc.drain()


async def _pull_and_ack(js: JetStreamContext, n: int) -> float:
    name = f"bench-ceiling-{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"], storage=StorageType.FILE))
    try:
        await _publish(js, [(f"{name}.0", b"", b"1", None)] * n)
        sub = await js.pull_subscribe(
            f"{name}.>", durable="ceiling", stream=name, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
        )
        got = 0
        start = time.perf_counter()
        while got < n:
            for msg in await raw_fetch(sub, 1000, timeout=5):
                await msg.ack()
                got += 1
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
        return n / elapsed
    finally:
        await js.delete_stream(name)


async def _throughput(nats_url: str, js: JetStreamContext, events: int, datadir: str) -> float:
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    topic = f"{app_id}-events"
    await TopicRegistry(js).declare(topic, PARTITIONS)
    items = []
    for i in range(events):
        key = f"key-{i % KEYS:04d}".encode()
        p = partition_for(key, PARTITIONS)
        items.append((naming.partition_subject(topic, p), key, b"1", encode_headers(key, b"1", None, None)))
    await _publish(js, items)
    app, counts = _app(app_id, nats_url, datadir)
    async with faust_worker(app):
        await wait_until(cast(Any, app.tables).recovery.completed.is_set, 60, "worker ready")
        start = time.perf_counter()
        await wait_until(lambda: sum(counts.data.values()) >= events, 600, "events counted")
        return events / (time.perf_counter() - start)


async def _recovery(nats_url: str, js: JetStreamContext, keys: int, datadir: str) -> float:
    app_id = f"bench-{uuid.uuid4().hex[:8]}"
    changelog = f"{app_id}-counts-changelog"
    await TopicRegistry(js).declare(changelog, PARTITIONS, compacting=True)
    items = []
    for i in range(keys):
        key = json.dumps(f"key-{i:06d}").encode()
        p = partition_for(key, PARTITIONS)
        items.append(
            (naming.key_subject(changelog, p, key), key, b"1", encode_headers(key, b"1", None, None))
        )
    await _publish(js, items)
    app, counts = _app(app_id, nats_url, datadir)
    start = time.perf_counter()
    async with faust_worker(app):
        await wait_until(cast(Any, app.tables).recovery.completed.is_set, 600, "table recovery")
        elapsed = time.perf_counter() - start
        if len(counts.data) != keys:
            raise AssertionError(f"recovered {len(counts.data)} keys, expected {keys}")
    return elapsed


async def bench_streams(
    nats_url: str, events: int = 100_000, recovery_keys: int = 100_000
) -> dict[str, float]:
    """Run the streams benchmark against ``nats_url``; returns the JSON fields."""
    logging.getLogger("faust").setLevel(logging.ERROR)
    ceilings = {client: await ceiling(nats_url, events, client) for client in RAW_CLIENTS}
    top = max(ceilings.values())
    nc = await connect(nats_url, name="bench-streams")
    try:
        js = await jetstream(nc)
        with tempfile.TemporaryDirectory(prefix="af-bench-streams-") as datadir:
            events_per_s = await _throughput(nats_url, js, events, datadir)
            recovery_s = await _recovery(nats_url, js, recovery_keys, datadir)
    finally:
        await nc.drain()
    return {
        "events_per_s": round(events_per_s, 1),
        "ceiling_per_s": round(top, 1),
        **{f"ceiling_{client}_per_s": round(per_s, 1) for client, per_s in ceilings.items()},
        "ratio": round(events_per_s / top, 3),
        "recovery_s": round(recovery_s, 3),
        "events": float(events),
        "recovery_keys": float(recovery_keys),
        "partitions": float(PARTITIONS),
    }

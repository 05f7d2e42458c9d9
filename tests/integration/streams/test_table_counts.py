"""A Faust agent counting into a table and windowed tables over the nats:// transport."""

from __future__ import annotations

import math
import time
from collections import Counter

from nats.js import JetStreamContext
from streams_counter_app import WINDOW_S, build_app
from streams_helpers import KEYS, eventually, key_of, publish_events, read_changelog, topic_declared
from streams_workers import running

# CI counts 20,000 events; `make bench` (tests/load/test_table_counts_100k.py)
# runs the same scenario at 100,000, which takes minutes on a loaded machine.
N = 20_000


def _window_start(ts: float) -> float:
    return math.floor(ts / WINDOW_S) * WINDOW_S


async def count_exactly(n: int, nats_url: str, js: JetStreamContext, app_id: str, *, within: float) -> None:
    """Publish ``n`` events over three windows; the tables and the changelog count each once."""
    t0 = _window_start(time.time()) - 3 * WINDOW_S

    def ts(i: int) -> float:
        return t0 + (i % 3) * WINDOW_S + 1.0

    app = build_app(app_id, nats_url)
    counts = app.tables["counts"]
    tumbling = app.tables["tumbling"]
    hopping = app.tables["hopping"]
    async with running(app):
        await eventually(lambda: topic_declared(js, f"{app_id}-events"), 30, "topic declared")
        await publish_events(js, f"{app_id}-events", n, timestamp_of=ts)

        async def all_counted() -> bool:
            return sum(counts.data.values()) >= n

        await eventually(all_counted, within, f"{n} events counted")

        assert dict(counts.data) == {key_of(i).decode(): n // KEYS for i in range(KEYS)}

        want_tumbling: Counter[tuple[str, float]] = Counter()
        want_hopping: Counter[tuple[str, float]] = Counter()
        for i in range(n):
            k, start = key_of(i).decode(), _window_start(ts(i))
            want_tumbling[(k, start)] += 1
            want_hopping[(k, start)] += 1
            want_hopping[(k, start - WINDOW_S)] += 1
        got_tumbling = {(k, w[0]): v for (k, w), v in tumbling.data.items()}
        got_hopping = {(k, w[0]): v for (k, w), v in hopping.data.items()}
        assert got_tumbling == dict(want_tumbling)
        assert got_hopping == dict(want_hopping)

    # The changelog holds the same table (what a restarted worker recovers from).
    changelog = await read_changelog(js, f"{app_id}-counts-changelog")
    merged = {k: v for part in changelog.values() for k, v in part.items()}
    assert merged == {key_of(i).decode(): n // KEYS for i in range(KEYS)}


async def test_events_are_counted_exactly_per_key_and_per_window(
    nats_url: str, js: JetStreamContext, app_id: str
) -> None:
    await count_exactly(N, nats_url, js, app_id, within=120)


async def test_restarted_worker_recovers_table_from_changelog_and_resumes_from_commit(
    nats_url: str, js: JetStreamContext, app_id: str
) -> None:
    topic = f"{app_id}-events"
    first = build_app(app_id, nats_url)
    async with running(first):
        await eventually(lambda: topic_declared(js, topic), 30, "topic declared")
        await publish_events(js, topic, 5_000)
        counts = first.tables["counts"]

        async def counted() -> bool:
            return sum(counts.data.values()) >= 5_000

        await eventually(counted, 60, "first 5000 events counted")

    second = build_app(app_id, nats_url)
    counts2 = second.tables["counts"]
    async with running(second):

        async def recovered() -> bool:
            return second.tables.recovery.completed.is_set() and sum(counts2.data.values()) >= 5_000

        await eventually(recovered, 60, "table recovered from changelog")
        assert sum(counts2.data.values()) == 5_000  # nothing re-processed
        await publish_events(js, topic, 2_000)

        async def counted_more() -> bool:
            return sum(counts2.data.values()) >= 7_000

        await eventually(counted_more, 60, "2000 more events counted")
        want = Counter(key_of(i).decode() for i in range(5_000))
        want.update(key_of(i).decode() for i in range(2_000))
        assert dict(counts2.data) == dict(want)

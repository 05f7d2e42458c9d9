"""The canary processor SIGKILLed mid-stream and restarted counts every event exactly once.

The processor runs as ``agent-factory processors --only canary`` in its own
process. At the kill its changelog is ahead of its committed offsets (it
commits every second and processes thousands of events a second), so the
restarted processor is handed events it already applied: the offset fence in
each bucket must skip them. Without the fence the counts come out high.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from mesh.embedded import NatsServer
from streams import naming
from streams.processors.app import prepare
from streams.processors.executions import EXECUTIONS_TOPIC
from tests.helpers import eventually
from tests.integration.processors.canary_events import Outcome, metrics, outcomes, publish, total
from tests.integration.processors.processes import ProcessorProcess

ROOT = Path(__file__).parents[3]
AGENTS = [f"agent-{i}" for i in range(6)]
VERSIONS = ["1.0.0", "1.1.0"]


def _batch(seed: int, per_pair: int) -> list[Outcome]:
    runs = [
        outcomes(a, v, per_pair, median_ms=30, error_rate=0.1, seed=seed) for a in AGENTS for v in VERSIONS
    ]
    return [o for group in zip(*runs, strict=True) for o in group]  # interleaved, as a fleet finishes them


async def _counted(js: JetStreamContext) -> int:
    return sum([total(await metrics(js, a, v)) for a in AGENTS for v in VERSIONS])


@dataclass
class Progress:
    """How far the canary group got (false until it committed past every event)."""

    stored: int
    events: int
    lagging: dict[int, tuple[int | None, int]]  # partition -> (committed next offset, last offset)

    def __bool__(self) -> bool:
        return self.stored == self.events and not self.lagging


async def _progress(js: JetStreamContext, partitions: int, events: int) -> Progress:
    """Every event is in af-executions and the canary group committed past all of them."""
    progress = Progress(0, events, {})
    for p in range(partitions):
        last = (await js.stream_info(naming.stream_name(EXECUTIONS_TOPIC, p))).state.last_seq
        progress.stored += last
        committed = None
        with contextlib.suppress(BucketNotFoundError, KeyNotFoundError, NotFoundError):
            offsets = await js.key_value(naming.offsets_bucket("af-canary"))
            entry = await offsets.get(naming.offset_key(EXECUTIONS_TOPIC, p))
            committed = json.loads(entry.value or b"{}").get("offset")
        if last and committed != last + 1:
            progress.lagging[p] = (committed, last)
    return progress


async def test_a_processor_sigkilled_mid_stream_and_restarted_counts_each_event_once(
    own_nats: NatsServer, own_js: JetStreamContext, tmp_path: Path
) -> None:
    partitions = await prepare(own_nats.url)
    # Enough that the processor, at over 5,000 events/s, is still at it when its first count shows.
    before, during, dead, after = _batch(1, 500), _batch(2, 1500), _batch(3, 100), _batch(4, 50)
    await publish(own_js, before)
    first = ProcessorProcess("canary", own_nats.url, tmp_path / "canary.log")
    try:
        await publish(own_js, during)
        await eventually(lambda: _counted(own_js), 60, "the processor counting")
        first.kill()  # mid-stream: thousands of events still to go
    finally:
        first.stop()
    counted_at_kill = await _counted(own_js)
    assert counted_at_kill < len(before) + len(during), "killed too late to be mid-stream"
    await publish(own_js, dead)
    second = ProcessorProcess("canary", own_nats.url, tmp_path / "canary.log")
    try:
        await publish(own_js, after)
        events = before + during + dead + after
        await eventually(lambda: _progress(own_js, partitions, len(events)), 120, "all events processed")
        caught_up = datetime.now(UTC)

        async def republished() -> bool:  # a publish computed after everything was applied
            found = [await metrics(own_js, a, v) for a in AGENTS for v in VERSIONS]
            return all(m is not None and m.as_of > caught_up for m in found)

        await eventually(republished, 30, "metrics published after the last event")
    finally:
        second.stop()
    expected = Counter((o.agent, o.version) for o in events)
    errors = Counter((o.agent, o.version) for o in events if o.failed)
    for agent in AGENTS:
        for version in VERSIONS:
            found = await metrics(own_js, agent, version)
            assert found is not None
            hour = found.windows["1h"]
            assert (hour.requests, hour.errors) == (expected[agent, version], errors[agent, version]), (
                agent, version, counted_at_kill,
            )  # fmt: skip

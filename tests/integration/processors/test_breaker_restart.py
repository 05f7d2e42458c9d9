"""A restarted breaker processor keeps its windows (the table's changelog) and applies each
event once even when the source replays it (the offset fence kept in the window)."""

from __future__ import annotations

from nats.js import JetStreamContext

from mesh.embedded import NatsServer
from mesh.queue.breakers import BreakerStatus, read_breaker
from streams.naming import offsets_bucket
from tests.helpers import eventually
from tests.integration.processors.breaker_fleet import breaker_processor, publish_outcome, window_calls


async def test_a_restarted_processor_keeps_its_window_and_applies_replayed_events_once(
    own_nats: NatsServer, own_js: JetStreamContext
) -> None:
    async with breaker_processor(own_nats.url) as (app, _):
        for i in range(4):  # 2 of 4 failed: fewer calls than the minimum, no decision
            await publish_outcome(own_js, "flaky", i, failed=i < 2)
        await eventually(lambda: window_calls(app, "flaky") == 4, 30, "4 calls in the window")
    # As if it had been killed before its last commit: nothing committed, the source replays
    # every event to the next owner, whose table (from the changelog) has applied them all.
    offsets = await own_js.key_value(offsets_bucket("af-breaker"))
    for key in await offsets.keys():
        await offsets.delete(key)
    async with breaker_processor(own_nats.url) as (app, _):
        await eventually(lambda: window_calls(app, "flaky") == 4, 30, "the window recovered")
        await publish_outcome(own_js, "flaky", 4, failed=False)  # after the replayed four
        # Counted twice, the replay would make 4 of 8 failed (50 %): open, window reset.
        await eventually(lambda: window_calls(app, "flaky") == 5, 30, "5 calls, the replayed ones once")
        state, _ = await read_breaker(own_js, "flaky")
        assert state.state == BreakerStatus.CLOSED

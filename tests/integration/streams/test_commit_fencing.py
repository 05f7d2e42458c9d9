"""A member the group declared dead cannot commit over the new owner's offsets.

The dead member here is a real Faust worker whose heartbeats stopped (what a
stalled or SIGSTOPped process looks like to the group): it still believes it
holds its partitions in its old generation, so only a check against what the
server stores can stop its commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

from faust.types import TP
from nats.js import JetStreamContext
from streams_counter_app import build_app
from streams_helpers import committed_offsets, eventually
from streams_workers import running

from streams import naming
from streams.membership import GroupMembership
from streams.offsets import OffsetStore

SESSION = 1.5


async def _assign(metadata: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return {member: b"" for member in metadata}


async def test_a_member_declared_dead_cannot_overwrite_the_new_owners_offsets(
    nats_url: str, js: JetStreamContext, app_id: str
) -> None:
    topic = f"{app_id}-events"
    tp = TP(topic, 0)
    app = build_app(app_id, nats_url, session_timeout=SESSION)
    new_owner = GroupMembership(
        js, app_id, "new-owner", metadata=lambda: b"", assign=_assign,
        heartbeat_s=0.25, session_timeout_s=SESSION,
    )  # fmt: skip
    new_owner.set_subscription((topic,))
    async with running(app):
        consumer = app.consumer

        async def owns_partition() -> bool:
            return tp in consumer.assignment()

        await eventually(owns_partition, 30, "the worker owning partition 0")
        assert await consumer._commit({tp: 5})  # type: ignore[attr-defined]  # alive: it may commit
        membership = consumer._membership  # type: ignore[attr-defined]
        held = membership.latest
        assert held is not None and consumer.member_id in held.members  # type: ignore[attr-defined]

        membership._task.cancel()  # heartbeats stop; its key stays: dead, not gone
        await new_owner.start()
        try:

            async def took_over() -> bool:
                return new_owner.latest is not None and new_owner.latest.members == ("new-owner",)

            await eventually(took_over, 10 * SESSION, "a generation without the dead member")
            newer = new_owner.latest
            assert newer is not None and newer.number > held.number
            assert not await OffsetStore(js, app_id).commit({tp: 1000}, newer.number)  # nothing refused

            # The dead member has not heard of the new generation; it tries to commit.
            assert membership.latest == held
            assert await consumer._commit({tp: 7}) is False  # type: ignore[attr-defined]
            assert (await committed_offsets(js, app_id, topic, partitions=1))[0] == 1000
            kv = await js.key_value(naming.offsets_bucket(app_id))
            stored = json.loads((await kv.get(naming.offset_key(topic, 0))).value or b"{}")
            assert stored == {"offset": 1000, "generation": newer.number}
        finally:
            await new_owner.stop()


async def test_an_older_generation_never_overwrites_a_newer_ones_offset(js: JetStreamContext) -> None:
    store, tp, other = OffsetStore(js, f"g-{uuid.uuid4().hex[:6]}"), TP("orders", 0), TP("orders", 1)
    assert await store.commit({tp: 10}, generation=3) == set()
    assert await store.commit({tp: 4, other: 9}, generation=2) == {tp}  # the rest is committed
    assert await store.read([tp, other]) == {tp: 10, other: 9}
    assert await store.commit({tp: 12}, generation=3) == set()  # the owner itself goes on
    assert await store.commit({tp: 20}, generation=4) == set()  # and a newer owner takes over
    assert await store.read([tp]) == {tp: 20}


async def test_offsets_from_an_earlier_life_of_the_group_do_not_fence(js: JetStreamContext) -> None:
    """The group bucket was deleted and generations restarted at 1; the offsets bucket was kept."""
    store, tp = OffsetStore(js, f"g-{uuid.uuid4().hex[:6]}"), TP("orders", 0)
    await store.commit({tp: 50}, generation=40)

    async def still_at_40() -> int:
        return 40

    async def restarted_at_2() -> int:
        return 2

    assert await store.commit({tp: 60}, generation=2, newest_generation=still_at_40) == {tp}
    assert await store.commit({tp: 60}, generation=2, newest_generation=restarted_at_2) == set()
    assert await store.read([tp]) == {tp: 60}

"""Group coordination in KV: one leader, generations of live members, bounded takeover, barrier."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping

import pytest
from nats.js import JetStreamContext
from streams_helpers import GroupLog, eventually

from streams.membership import Generation, GroupMembership

HEARTBEAT = 0.25
SESSION = 1.5


async def _assign(metadata: Mapping[str, bytes]) -> Mapping[str, bytes]:
    return {member: b"parts-of-" + member.encode() for member in metadata}


@pytest.fixture
async def group(js: JetStreamContext) -> AsyncIterator[list[GroupMembership]]:
    """Factory list of started members of one fresh group; all stopped at teardown."""
    members: list[GroupMembership] = []
    yield members
    for m in members:
        await m.stop()


async def _join(
    js: JetStreamContext,
    members: list[GroupMembership],
    group_id: str,
    name: str,
    session_timeout_s: float = SESSION,
) -> GroupMembership:
    m = GroupMembership(
        js,
        group_id,
        name,
        metadata=lambda: b"meta",
        assign=_assign,
        heartbeat_s=HEARTBEAT,
        session_timeout_s=session_timeout_s,
    )
    m.set_subscription(("events",))
    await m.start()
    members.append(m)
    return m


def _crash(member: GroupMembership) -> None:
    """Stop heartbeating without leaving (what SIGKILL looks like to the others)."""
    assert member._task is not None
    member._task.cancel()


async def test_one_leader_and_a_generation_of_all_live_members(
    js: JetStreamContext, group: list[GroupMembership]
) -> None:
    gid = f"g{uuid.uuid4().hex[:8]}"
    a = await _join(js, group, gid, "a")
    b = await _join(js, group, gid, "b")

    async def both() -> bool:
        return all(m.latest is not None and m.latest.members == ("a", "b") for m in (a, b))

    await eventually(both, 10, "a generation with a and b")
    assert [a.is_leader, b.is_leader].count(True) == 1
    assert a.latest is not None and a.latest.assignments["b"] == b"parts-of-b"


async def test_crashed_member_is_dropped_once_the_session_timeout_has_passed(
    js: JetStreamContext, group: list[GroupMembership]
) -> None:
    gid = f"g{uuid.uuid4().hex[:8]}"
    a = await _join(js, group, gid, "a")
    b = await _join(js, group, gid, "b")
    await eventually(lambda: _is(a, ("a", "b")), 10, "both members")
    survivor, victim = (a, b) if a.is_leader else (b, a)
    log = GroupLog()
    await log.start(js, gid)
    try:
        await eventually(lambda: log.ready(survivor.member_id, victim.member_id), 10, "heartbeats logged")
        _crash(victim)
        await eventually(lambda: log.drop(victim.member_id) is not None, 30, "victim dropped")
        # Judged on the survivor's heartbeats: no sooner than the timeout, at most two beats later.
        log.assert_dropped_on_time(victim.member_id, survivor.member_id, SESSION)
        assert await _is(survivor, (survivor.member_id,))
    finally:
        await log.stop()


async def test_leader_lease_moves_when_the_leader_crashes(
    js: JetStreamContext, group: list[GroupMembership]
) -> None:
    gid = f"g{uuid.uuid4().hex[:8]}"
    a = await _join(js, group, gid, "a")
    b = await _join(js, group, gid, "b")
    await eventually(lambda: _is(a, ("a", "b")), 10, "both members")
    leader, other = (a, b) if a.is_leader else (b, a)
    _crash(leader)

    async def took_over() -> bool:
        return other.is_leader and other.latest is not None and other.latest.members == (other.member_id,)

    await eventually(took_over, 10, "the other member leading a generation of its own")


async def test_barrier_waits_until_every_other_member_released_the_generation(
    js: JetStreamContext, group: list[GroupMembership]
) -> None:
    gid = f"g{uuid.uuid4().hex[:8]}"
    # A long session: b must stay alive in everyone's eyes for the whole test. With the
    # short one, a 2-core machine under load once stalled b's heartbeat past it, a newer
    # generation formed, and the barrier rightly returned False before the assertion.
    a = await _join(js, group, gid, "a", session_timeout_s=30)
    b = await _join(js, group, gid, "b", session_timeout_s=30)
    await eventually(lambda: _is(a, ("a", "b")), 10, "both members")
    gen = a.latest
    assert isinstance(gen, Generation)
    await a.release(gen.number)
    log = GroupLog()
    await log.start(js, gid)
    waiting = asyncio.ensure_future(a.wait_released(gen))
    try:
        await eventually(lambda: bool(log.beats("b")), 10, "b's heartbeat logged")
        since = log.beats("b")[-1]
        # b keeps heartbeating (alive) but has not released: a waits through b's beats.
        await eventually(lambda: len([at for at in log.beats("b") if at > since]) >= 2, 10, "2 beats")
        assert not waiting.done()
        await b.release(gen.number)
        assert await asyncio.wait_for(waiting, 5) is True
    finally:
        waiting.cancel()
        await log.stop()


async def _is(member: GroupMembership, members: tuple[str, ...]) -> bool:
    return member.latest is not None and member.latest.members == members


async def test_a_member_one_listing_misses_is_looked_up_not_dropped(
    js: JetStreamContext, group: list[GroupMembership]
) -> None:
    """The leader lists the group's keys every tick; a member whose key a listing
    misses (its heartbeat raced the listing) is still alive: no generation
    without it may form. One that left for good is dropped (the other tests)."""
    gid = f"g{uuid.uuid4().hex[:8]}"
    a = await _join(js, group, gid, "a", session_timeout_s=30)
    b = await _join(js, group, gid, "b", session_timeout_s=30)
    await eventually(lambda: _is(a, ("a", "b")), 10, "both members")
    gen = a.latest
    assert gen is not None
    kv = a._kv
    assert kv is not None
    listings = kv.keys
    missed: list[int] = []

    async def keys_without_b(*args: object, **kwargs: object) -> list[str]:
        found = await listings(*args, **kwargs)  # type: ignore[arg-type]
        if len(missed) < 3:
            missed.append(1)
            return [k for k in found if k != GroupMembership._member_key(b.member_id)]
        return found

    kv.keys = keys_without_b  # type: ignore[method-assign]
    await eventually(lambda: len(missed) >= 3, 10, "three listings that miss b")
    beat = a._beat
    await eventually(lambda: a._beat >= beat + 1, 10, "one more tick")
    assert a.latest is not None and a.latest.number == gen.number and a.latest.members == ("a", "b")

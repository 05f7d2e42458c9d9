"""Ephemeral channels: core NATS fan-out, best effort by design, wildcards, limits."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from mesh.channels.errors import InvalidChannelName, TooManySubscribers
from mesh.channels.messaging import Mesh, MeshConfig
from mesh.channels.registry import BROADCAST, Channel
from mesh.channels.schemas import SchemaRegistry
from mesh.channels.subscriptions import EphemeralSubscription
from mesh.envelope import Envelope

Eventually = Callable[..., Awaitable[None]]


def collector(into: list[Envelope]) -> Callable[[Envelope], Awaitable[None]]:
    async def handle(env: Envelope) -> None:
        into.append(env)

    return handle


async def test_event_published_while_nobody_listens_is_gone_by_design(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    await mesh.publish_event(channel, "nobody hears this")
    got: list[Envelope] = []
    await mesh.subscribe(channel, collector(got))
    await mesh.publish_event(channel, "heard")
    await eventually(lambda: len(got) == 1)
    await mesh.nc.flush()
    assert [e.payload for e in got] == ["heard"]


async def test_every_subscriber_gets_every_event(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    inboxes: list[list[Envelope]] = [[], [], []]
    async with Mesh(other_nc, agent="listener") as other:
        await mesh.subscribe(channel, collector(inboxes[0]))
        await other.subscribe(channel, collector(inboxes[1]))
        await other.subscribe(channel, collector(inboxes[2]))
        for i in range(20):
            await mesh.publish_event(channel, i)
        await eventually(lambda: all(len(box) == 20 for box in inboxes))
    for box in inboxes:
        assert [e.payload for e in box] == list(range(20))
        assert all(e.message_type == "EVENT" and e.channel_type == "EPHEMERAL" for e in box)


async def test_events_on_one_subject_arrive_in_publish_order(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    got: list[Envelope] = []
    async with Mesh(other_nc, agent="listener") as other:
        await other.subscribe(channel, collector(got))
        for i in range(1000):
            await mesh.publish_event(channel, i)
        await eventually(lambda: len(got) == 1000)
    assert [e.payload for e in got] == list(range(1000))


async def test_wildcard_subscription_sees_every_matching_channel(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    health: list[Envelope] = []
    everything: list[Envelope] = []
    await mesh.subscribe(f"ephemeral:{unique}.*.health", collector(health))
    await mesh.subscribe(f"ephemeral:{unique}.>", collector(everything))
    await mesh.publish_event(f"ephemeral:{unique}.fuel.health", "ok")
    await mesh.publish_event(f"ephemeral:{unique}.grid.load", 0.7)
    await mesh.publish_event(f"ephemeral:{unique}.grid.health", "degraded")
    await eventually(lambda: len(everything) == 3)
    await eventually(lambda: len(health) == 2)
    assert [e.payload for e in health] == ["ok", "degraded"]
    assert [e.target for e in health] == [
        f"ephemeral:{unique}.fuel.health",
        f"ephemeral:{unique}.grid.health",
    ]


async def test_broadcast_reaches_every_agent(mesh: Mesh, other_nc: Client, eventually: Eventually) -> None:
    first: list[Envelope] = []
    second: list[Envelope] = []
    async with Mesh(other_nc, agent="other") as other:
        await mesh.subscribe(BROADCAST, collector(first))
        await other.subscribe(BROADCAST, collector(second))
        await mesh.broadcast({"drain": True}, type="fleet.drain")
        await eventually(lambda: len(first) == 1 and len(second) == 1)
    assert first[0].payload == second[0].payload == {"drain": True}


async def test_ephemeral_channel_refuses_subscribers_past_its_limit(
    mesh: Mesh, other_nc: Client, unique: str
) -> None:
    channel = f"ephemeral:{unique}"
    limited = MeshConfig(channel_limits={channel: 2})
    async with Mesh(other_nc, agent="other", config=limited) as other:
        first = await other.subscribe(channel, collector([]))
        await other.subscribe(channel, collector([]))
        with pytest.raises(TooManySubscribers, match="maximum of 2 subscribers"):
            await other.subscribe(channel, collector([]))
        await other.unsubscribe(first)
        await other.subscribe(channel, collector([]))  # the freed slot is usable again


async def test_api_makes_the_guarantee_explicit(mesh: Mesh, unique: str) -> None:
    with pytest.raises(InvalidChannelName, match="use send_durable"):
        await mesh.publish_event(f"durable:{unique}", "x")
    with pytest.raises(InvalidChannelName, match="use publish_event"):
        await mesh.send_durable(f"ephemeral:{unique}", "x")
    with pytest.raises(InvalidChannelName, match="must start with"):
        await mesh.publish_event(unique, "x")


async def test_a_subscription_is_live_on_the_server_when_subscribe_returns(
    mesh: Mesh, other_nc: Client, unique: str
) -> None:
    async with Mesh(other_nc, agent="server") as other:
        for i in range(100):
            sub = await other.serve(f"{unique}-{i}", collector([]))
            await mesh.request(f"{unique}-{i}", i, 2)  # NoResponders if the SUB lagged behind
            await other.unsubscribe(sub)


async def test_a_handler_that_waits_holds_back_later_events_which_keep_their_order(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def handle(env: Envelope) -> None:
        started.append(env.payload)
        if env.payload == 0:
            await release.wait()  # the first event waits; the rest queue behind it
        finished.append(env.payload)

    async with Mesh(other_nc, agent="listener") as other:
        await other.subscribe(channel, handle)
        for i in range(200):
            await mesh.publish_event(channel, i)
        await mesh.nc.flush()
        await other_nc.flush()  # everything sent has reached the listener's connection
        # ... but its handler's first step may run a loop turn after the flush returns.
        await eventually(lambda: started != [])
        await other_nc.flush()  # a round trip more: a wrongly started second event would show
        assert started == [0] and finished == []
        release.set()
        await eventually(lambda: len(finished) == 200)
    assert started == finished == list(range(200))


async def test_handler_context_is_reset_between_events_and_sends_inherit_the_handled_one(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel, echoes = f"ephemeral:{unique}", f"ephemeral:{unique}.echo"
    seen: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        if env.payload == "wait":
            await asyncio.sleep(0)  # continue outside the connection's reader
        await mesh.publish_event(echoes, env.payload)

    await mesh.subscribe(channel, handle)
    await mesh.subscribe(echoes, collector(seen))
    sent = ["now", "wait", "now"]
    for payload in sent:
        await mesh.publish_event(channel, payload)
    await eventually(lambda: len(seen) == 3)
    assert [e.payload for e in seen] == sent
    assert len({e.causation_id for e in seen}) == 3  # each echo is caused by its own event
    assert all(e.correlation_id == e.causation_id for e in seen)


async def test_unsubscribing_cancels_a_waiting_handler_and_drops_its_backlog(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    handled: list[int] = []
    cancelled = asyncio.Event()

    async def handle(env: Envelope) -> None:
        handled.append(env.payload)
        try:
            await asyncio.Event().wait()  # never set
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sub = await mesh.subscribe(channel, handle)
    for i in range(5):
        await mesh.publish_event(channel, i)
    await eventually(lambda: handled == [0])
    await mesh.nc.flush()
    await mesh.unsubscribe(sub)
    assert cancelled.is_set() and handled == [0]


async def test_a_slow_subscriber_drops_what_does_not_fit_its_backlog(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = Channel.parse(f"ephemeral:{unique}")
    release = asyncio.Event()
    handled: list[int] = []

    async def handle(env: Envelope) -> None:
        handled.append(env.payload)
        await release.wait()

    sub = EphemeralSubscription(other_nc, channel, handle, SchemaRegistry(), pending_msgs_limit=10)
    await sub.start()
    try:
        for i in range(50):
            await mesh.publish_event(channel, i)
        await eventually(lambda: sub._delivery.dropped == 39)  # 1 in the handler, 10 waiting
        release.set()
        await eventually(lambda: len(handled) == 11)
        assert handled == list(range(11))
    finally:
        await sub.stop()

"""Durable channels, ephemeral channels and request/reply carry on across a nats-server restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mesh.channels.messaging import Mesh
from mesh.channels.subscriptions import DurableOptions
from mesh.embedded import NatsServer
from mesh.envelope import Envelope
from mesh.wire.protocol import sync_with_server


async def test_durable_subscriber_resumes_after_the_server_restarts(
    mesh: Mesh, nats_server: NatsServer, unique: str, eventually: Callable[..., Awaitable[None]]
) -> None:
    channel = f"durable:{unique}"
    got: list[int] = []

    async def handle(env: Envelope) -> None:
        got.append(env.payload)

    await mesh.subscribe(channel, handle, options=DurableOptions(poll_s=30))
    await mesh.send_durable_many(channel, range(10))
    await eventually(lambda: len(got) == 10)
    await asyncio.to_thread(nats_server.restart)
    await eventually(lambda: mesh.nc.is_connected, 10, "reconnected")
    await mesh.send_durable_many(channel, range(10, 20))
    await eventually(lambda: len(got) == 20, 5, "delivery resumed without waiting for expiry")
    assert sorted(got) == list(range(20))


async def test_events_and_requests_reach_direct_subscriptions_again_after_a_restart(
    mesh: Mesh, nats_server: NatsServer, unique: str, eventually: Callable[..., Awaitable[None]]
) -> None:
    channel = f"ephemeral:{unique}"
    got: list[int] = []

    async def handle(env: Envelope) -> None:
        got.append(env.payload)

    async def echo(env: Envelope) -> object:
        return env.payload

    await mesh.subscribe(channel, handle)
    await mesh.serve(unique, echo)
    await asyncio.to_thread(nats_server.restart)
    await eventually(lambda: mesh.nc.is_connected, 10, "reconnected")
    await sync_with_server(mesh.nc)  # the re-sent subscriptions are in place
    await mesh.publish_event(channel, 1)
    await eventually(lambda: got == [1])
    assert (await mesh.request(unique, 2)).payload == 2

"""One trace across a chain of agents; channels and their subscribers are listable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import names
from mesh.channels.messaging import Mesh
from mesh.channels.registry import Channel, list_channels, tail
from mesh.envelope import Envelope
from mesh.trace import CORRELATION_HEADER, trace_id_of
from mesh.wire.protocol import sync_with_server

Eventually = Callable[..., Awaitable[None]]


async def test_a_chain_of_agent_calls_is_one_trace_with_one_correlation_id(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    intake, calc, report = f"durable:{unique}.intake", f"{unique}-calc", f"ephemeral:{unique}.done"
    seen: list[Msg] = []

    async def spy(msg: Msg) -> None:
        seen.append(msg)

    for subject in (Channel.parse(intake).subject, names.rpc_subject(calc),
                    Channel.parse(report).subject):  # fmt: skip
        await mesh.nc.subscribe(subject, cb=spy)
    await sync_with_server(mesh.nc)
    done: list[Envelope] = []

    async def calculator(env: Envelope) -> float:
        return float(env.payload["litres"]) * 2.68

    async def intake_agent(env: Envelope) -> None:
        result = await other.request(calc, env.payload, 5)
        await other.publish_event(report, {"kg_co2e": result.payload})

    async def reporter(env: Envelope) -> None:
        done.append(env)

    async with Mesh(other_nc, agent="intake") as other:
        await other.serve(calc, calculator)
        await other.subscribe(intake, intake_agent)
        await mesh.subscribe(report, reporter)
        await mesh.send_durable(intake, {"litres": 100}, correlation_id="upload-9")
        await eventually(lambda: len(done) == 1 and len(seen) >= 3)
    assert done[0].correlation_id == "upload-9"
    assert done[0].payload["kg_co2e"] == 268.0
    hops = [m.headers or {} for m in seen[:3]]
    assert {trace_id_of(h) for h in hops} == {trace_id_of(hops[0])}
    assert trace_id_of(hops[0]) is not None
    assert {h[CORRELATION_HEADER] for h in hops} == {"upload-9"}


async def test_listing_shows_channels_with_their_subscribers(
    mesh: Mesh, other_nc: Client, unique: str
) -> None:
    durable, ephemeral = f"durable:{unique}", f"ephemeral:{unique}.health"

    async def ignore(env: Envelope) -> None:
        return None

    async with Mesh(other_nc, agent="watcher") as other:
        sub = await mesh.subscribe(ephemeral, ignore)
        await other.subscribe(ephemeral, ignore)
        await other.subscribe(durable, ignore)
        await mesh.send_durable(durable, "queued")
        await other.serve(f"{unique}-calc", ignore)
        listed = {c.name: c for c in await list_channels(mesh.js)}
        assert [s.agent for s in listed[f"ephemeral:rpc.{unique}-calc"].subscribers] == ["watcher"]
        assert sorted(s.agent for s in listed[ephemeral].subscribers) == ["tester", "watcher"]
        assert [s.agent for s in listed[durable].subscribers] == ["watcher"]
        assert listed[durable].subject == f"af.ch.{unique}"
        assert listed[durable].pending is not None
        await mesh.unsubscribe(sub)
        listed = {c.name: c for c in await list_channels(mesh.js)}
        assert [s.agent for s in listed[ephemeral].subscribers] == ["watcher"]
    listed = {c.name: c for c in await list_channels(mesh.js)}
    assert ephemeral not in listed
    assert listed[durable].subscribers == []  # the consumer group remains, with nobody in it


async def test_tail_shows_durable_traffic_without_taking_it_from_the_group(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    tailed: list[Envelope] = []
    handled: list[Envelope] = []

    async def follow() -> None:
        async for env in tail(mesh.nc, channel):
            tailed.append(env)

    async def handle(env: Envelope) -> None:
        handled.append(env)

    follower = asyncio.create_task(follow())
    await eventually(lambda: Channel.parse(channel).subject in _subjects(mesh.nc))
    await sync_with_server(mesh.nc)
    await mesh.subscribe(channel, handle)
    for i in range(3):
        await mesh.send_durable(channel, i)
    await eventually(lambda: len(tailed) == 3 and len(handled) == 3)
    follower.cancel()
    assert [e.payload for e in tailed] == [e.payload for e in handled] == [0, 1, 2]


def _subjects(nc: Client) -> set[str]:
    return {sub.subject for sub in nc._subs.values()}

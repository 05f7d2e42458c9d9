"""Durable channels: stored, point-to-point, at least once, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.channels.messaging import Mesh
from mesh.channels.registry import CHANNELS_STREAM, Channel
from mesh.channels.subscriptions import DurableOptions
from mesh.envelope import Envelope
from mesh.errors import PayloadTooLarge
from mesh.names import STREAM_DLQ, dlq_subject

Eventually = Callable[..., Awaitable[None]]
FAST = DurableOptions(max_attempts=3, ack_timeout_s=2.0, backoff_s=(0.05,), poll_s=1.0)


async def stored_on(js: JetStreamContext, channel: str) -> int:
    info = await js.stream_info(CHANNELS_STREAM, subjects_filter=Channel.parse(channel).subject)
    return sum((info.state.subjects or {}).values())


async def test_message_sent_before_anyone_subscribes_is_delivered_later(mesh: Mesh, unique: str) -> None:
    channel = f"durable:{unique}"
    seq = await mesh.send_durable(channel, {"kg_co2e": 12.5}, type="carbon.result")
    got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()

    async def handle(env: Envelope) -> None:
        got.set_result(env)

    await mesh.subscribe(channel, handle, options=FAST)
    env = await asyncio.wait_for(got, 5)
    assert seq > 0
    assert env.payload == {"kg_co2e": 12.5}
    assert env.type == "carbon.result"
    assert env.source == "tester"


async def test_each_message_goes_to_exactly_one_member_of_the_consumer_group(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    seen: dict[str, list[int]] = {"a": [], "b": []}

    def member(name: str) -> Callable[[Envelope], Awaitable[None]]:
        async def handle(env: Envelope) -> None:
            seen[name].append(env.payload)
            await asyncio.sleep(0.002)  # stands for work, lets the other member pull

        return handle

    one = DurableOptions(batch=1, poll_s=1.0)
    async with Mesh(other_nc, agent="member-b") as other:
        await mesh.subscribe(channel, member("a"), options=one)
        await other.subscribe(channel, member("b"), options=one)
        await mesh.send_durable_many(channel, range(200))
        await eventually(lambda: len(seen["a"]) + len(seen["b"]) >= 200, 10)
    delivered = Counter(seen["a"] + seen["b"])
    assert sorted(delivered) == list(range(200))
    assert set(delivered.values()) == {1}, "a message reached two members"
    assert seen["a"] and seen["b"], "the group did not share the work"


async def test_messages_on_one_channel_arrive_in_send_order(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    got: list[int] = []

    async def handle(env: Envelope) -> None:
        got.append(env.payload)

    await mesh.send_durable_many(channel, range(150))
    await mesh.subscribe(channel, handle, options=FAST)
    for i in range(150, 300):
        await mesh.send_durable(channel, i)
    await eventually(lambda: len(got) >= 300, 10)
    assert got == list(range(300))


async def test_nacked_message_is_redelivered_until_the_handler_succeeds(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    attempts: list[str] = []

    async def flaky(env: Envelope) -> None:
        attempts.append(env.id)
        if len(attempts) < 3:
            raise RuntimeError("emission factor service unavailable")

    await mesh.subscribe(channel, flaky, options=DurableOptions(max_attempts=5, backoff_s=(0.05,)))
    await mesh.send_durable(channel, {"fuel": "diesel"})
    await eventually(lambda: mesh.tracker.count(channel, "ack") == 1)
    assert len(attempts) == 3 and len(set(attempts)) == 1
    assert mesh.tracker.count(channel, "nak") == 2
    assert mesh.tracker.pending(channel) == []


async def test_handler_that_outlives_the_ack_timeout_is_cancelled_and_redelivered(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    calls = 0
    never = asyncio.Event()

    async def hangs_once(env: Envelope) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()

    options = DurableOptions(ack_timeout_s=0.2, backoff_s=(0.0,))
    await mesh.subscribe(channel, hangs_once, options=options)
    await mesh.send_durable(channel, "slow")
    await eventually(lambda: mesh.tracker.count(channel, "ack") == 1)
    assert calls == 2
    assert mesh.tracker.count(channel, "timeout") == 1


async def test_poison_message_is_dead_lettered_after_max_attempts_with_every_error(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"

    async def always_fails(env: Envelope) -> None:
        raise ValueError(f"bad unit {env.payload['unit']!r}")

    dlq = await mesh.js.subscribe(dlq_subject("channels", unique), stream=STREAM_DLQ)
    await mesh.subscribe(channel, always_fails, options=FAST)
    await mesh.send_durable(channel, {"unit": "furlong"}, tenant="acme")
    letter = json.loads((await dlq.next_msg(timeout=10)).data)
    await dlq.unsubscribe()
    assert letter["origin"] == "channels" and letter["name"] == unique
    assert letter["tenant"] == "acme"
    assert [e["attempt"] for e in letter["errors"]] == [1, 2, 3]
    assert all("furlong" in e["error"] and e["error_type"] == "ValueError" for e in letter["errors"])
    assert json.loads(base64.b64decode(letter["payload_b64"]))["payload"] == {"unit": "furlong"}
    assert mesh.tracker.count(channel, "dead_letter") == 1

    async def channel_empty() -> bool:
        return await stored_on(mesh.js, channel) == 0

    await eventually(channel_empty, what="the poison message left the channel")


async def test_subscriber_crash_and_restart_loses_nothing(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    started = asyncio.Event()
    never = asyncio.Event()

    async def dies_mid_message(env: Envelope) -> None:
        started.set()
        await never.wait()

    crash_options = DurableOptions(ack_timeout_s=60, ack_wait_s=1.0, batch=10)
    crashing = Mesh(other_nc, agent="crashy")
    await crashing.start()
    await crashing.subscribe(channel, dies_mid_message, options=crash_options)
    await mesh.send_durable_many(channel, range(50))
    await asyncio.wait_for(started.wait(), 5)
    await other_nc.close()  # the process dies holding ten unacked messages

    got: set[int] = set()

    async def handle(env: Envelope) -> None:
        got.add(env.payload)

    await mesh.subscribe(channel, handle, options=crash_options)
    await eventually(lambda: len(got) == 50, 10, "all 50 messages after the restart")
    assert got == set(range(50))
    never.set()
    await asyncio.wait_for(crashing.stop(), 5)  # cleaning up after a dead connection is quick


async def test_message_past_its_ttl_expires_undelivered(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    await mesh.send_durable(channel, "stale quote", ttl_s=1)
    await mesh.send_durable(channel, "keeps")
    assert await stored_on(mesh.js, channel) == 2

    async def one_left() -> bool:
        return await stored_on(mesh.js, channel) == 1

    await eventually(one_left, 5, "the TTL message expired in the stream")
    got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
    await mesh.subscribe(channel, lambda env: _resolve(got, env), options=FAST)
    assert (await asyncio.wait_for(got, 5)).payload == "keeps"


async def _resolve(future: asyncio.Future[Envelope], env: Envelope) -> None:
    if not future.done():
        future.set_result(env)


async def test_oversized_message_is_refused_before_publish(mesh: Mesh, unique: str) -> None:
    channel = f"durable:{unique}"
    with pytest.raises(PayloadTooLarge, match="limit is 1000000 bytes"):
        await mesh.send_durable(channel, "x" * 1_000_000)
    assert await stored_on(mesh.js, channel) == 0


async def test_resending_the_same_envelope_id_stores_it_once(mesh: Mesh, unique: str) -> None:
    channel = f"durable:{unique}"
    first = await mesh.send_durable(channel, "calc", id="calc-42")
    again = await mesh.send_durable(channel, "calc", id="calc-42")
    assert first == again
    assert await stored_on(mesh.js, channel) == 1


async def test_message_that_keeps_killing_its_subscriber_ends_in_the_dlq_unhandled(
    mesh: Mesh, other_nc: Client, unique: str
) -> None:
    channel = f"durable:{unique}"
    options = DurableOptions(max_attempts=1, ack_timeout_s=60, ack_wait_s=1.0)
    started = asyncio.Event()
    never = asyncio.Event()

    async def dies(env: Envelope) -> None:
        started.set()
        await never.wait()

    crashing = Mesh(other_nc, agent="crashy")
    await crashing.start()
    await crashing.subscribe(channel, dies, options=options)
    await mesh.send_durable(channel, "poison")
    await asyncio.wait_for(started.wait(), 5)
    await other_nc.close()  # attempt 1 dies with its process

    handled: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        handled.append(env)

    dlq = await mesh.js.subscribe(dlq_subject("channels", unique), stream=STREAM_DLQ)
    await mesh.subscribe(channel, handle, options=options)
    letter = json.loads((await dlq.next_msg(timeout=10)).data)
    await dlq.unsubscribe()
    assert letter["reason"] == "no ack after 1 attempts"
    assert letter["errors"][0]["error_type"] == "AckTimeout"
    assert handled == []
    never.set()
    await asyncio.wait_for(crashing.stop(), 5)


async def test_unsubscribing_finishes_the_message_in_hand_and_hands_back_the_rest(
    mesh: Mesh, other_nc: Client, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    options = DurableOptions(ack_timeout_s=30, batch=10)  # ack_wait 32 s: a hand-back must be a nak
    started, release = asyncio.Event(), asyncio.Event()
    first: list[int] = []

    async def slow(env: Envelope) -> None:
        first.append(env.payload)
        started.set()
        await release.wait()

    leaving = Mesh(other_nc, agent="leaving")
    await leaving.start()
    sub = await leaving.subscribe(channel, slow, options=options)
    await mesh.send_durable_many(channel, range(5))
    await asyncio.wait_for(started.wait(), 5)
    stopping = asyncio.create_task(leaving.unsubscribe(sub))
    release.set()
    await asyncio.wait_for(stopping, 5)
    await leaving.stop()

    rest: list[int] = []

    async def handle(env: Envelope) -> None:
        rest.append(env.payload)

    await mesh.subscribe(channel, handle, options=options)
    await eventually(lambda: len(first) + len(rest) == 5, 5, "handed-back messages well before ack_wait")
    assert first == [0]
    assert sorted(rest) == [1, 2, 3, 4]


async def test_stopping_a_mesh_leaves_nothing_running(
    provisioned: JetStreamContext, other_nc: Client, unique: str
) -> None:
    await other_nc.request("$JS.API.INFO", b"")  # nats-py's own per-connection reply inbox
    subscriptions_before = set(other_nc._subs)
    tasks_before = {t for t in asyncio.all_tasks() if t.get_name().startswith("af-")}
    mesh = Mesh(other_nc, agent="short-lived")
    await mesh.start()

    async def ignore(env: Envelope) -> None:
        return None

    await mesh.subscribe(f"durable:{unique}", ignore)
    await mesh.subscribe(f"ephemeral:{unique}", ignore)
    await mesh.serve(unique, ignore)
    await mesh.serve(unique, ignore, durable=True)
    await mesh.send_durable_many(f"durable:{unique}", range(3))
    await mesh.stop()
    assert set(other_nc._subs) == subscriptions_before
    assert {t for t in asyncio.all_tasks() if t.get_name().startswith("af-")} == tasks_before
    assert mesh._waiting == {}

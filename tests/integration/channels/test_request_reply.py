"""Request/reply over ephemeral and durable transports: correlated, bounded, leak-free."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.aio.client import Client

from mesh import names
from mesh.channels.errors import NoResponders, RemoteError
from mesh.channels.messaging import Mesh, rpc_channel
from mesh.channels.registry import CHANNELS_STREAM, Channel
from mesh.channels.subscriptions import DurableOptions
from mesh.envelope import Envelope
from mesh.errors import RequestTimeout

Eventually = Callable[..., Awaitable[None]]


async def double(env: Envelope) -> Any:
    return {"value": env.payload["value"] * 2}


async def test_reply_carries_the_request_correlation(mesh: Mesh, unique: str) -> None:
    await mesh.serve(unique, double)
    reply = await mesh.request(unique, {"value": 21}, 2, correlation_id="job-7")
    assert reply.payload == {"value": 42}
    assert reply.message_type == "RESPONSE"
    assert reply.correlation_id == "job-7"
    assert reply.causation_id is not None


async def test_request_timeout_raises_a_clear_error_and_leaks_nothing(mesh: Mesh, unique: str) -> None:
    never = asyncio.Event()

    async def stuck(env: Envelope) -> None:
        await never.wait()

    await mesh.serve(unique, stuck)
    subscriptions_before = len(mesh.nc._subs)
    started = time.monotonic()
    with pytest.raises(RequestTimeout, match=rf"no reply from agent '{unique}' within 0.2s"):
        await mesh.request(unique, {"value": 1}, 0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert mesh._waiting == {}
    assert len(mesh.nc._subs) == subscriptions_before
    assert mesh.tracker.count(f"rpc:{unique}", "timeout") == 1
    assert mesh.tracker.pending(f"rpc:{unique}") == []
    never.set()


async def test_request_to_an_agent_nobody_serves_fails_fast(mesh: Mesh, unique: str) -> None:
    started = time.monotonic()
    with pytest.raises(NoResponders, match=f"no agent is serving requests for '{unique}'"):
        await mesh.request(unique, {"value": 1}, 5)
    assert time.monotonic() - started < 1.0
    assert mesh._waiting == {}


async def test_handler_error_reaches_the_caller(mesh: Mesh, unique: str) -> None:
    async def broken(env: Envelope) -> None:
        raise LookupError("no emission factor for 'unobtainium'")

    await mesh.serve(unique, broken)
    with pytest.raises(RemoteError, match="LookupError: no emission factor"):
        await mesh.request(unique, {"value": 1}, 2)


async def test_durable_request_is_answered_by_a_server_that_starts_later(
    mesh: Mesh, unique: str, eventually: Callable[..., Awaitable[None]]
) -> None:
    pending = asyncio.create_task(mesh.request(unique, {"value": 5}, 5, durable=True))

    async def stored() -> bool:
        info = await mesh.js.stream_info(CHANNELS_STREAM, subjects_filter=rpc_channel(unique).subject)
        return bool(info.state.subjects)

    await eventually(stored, what="the request is stored before anyone serves")
    await mesh.serve(unique, double, durable=True)
    reply = await pending
    assert reply.payload == {"value": 10}


async def test_durable_request_times_out_when_nobody_serves(mesh: Mesh, unique: str) -> None:
    with pytest.raises(RequestTimeout):
        await mesh.request(unique, {"value": 1}, 0.3, durable=True)
    assert mesh._waiting == {}


@pytest.mark.parametrize("durable", [False, True], ids=["ephemeral", "durable"])
async def test_thousand_concurrent_requests_each_get_their_own_reply(
    mesh: Mesh, unique: str, durable: bool
) -> None:
    options = DurableOptions(concurrency=64, batch=256)
    await mesh.serve(unique, double, durable=durable, options=options)
    replies = await asyncio.gather(
        *(
            mesh.request(unique, {"value": i}, 20, durable=durable, correlation_id=f"c{i}")
            for i in range(1000)
        )
    )
    assert [r.payload["value"] for r in replies] == [2 * i for i in range(1000)]
    assert [r.correlation_id for r in replies] == [f"c{i}" for i in range(1000)]
    assert mesh._waiting == {}


async def test_reply_too_large_reaches_the_caller_as_an_error(mesh: Mesh, unique: str) -> None:
    async def huge(env: Envelope) -> str:
        return "x" * 1_000_000

    await mesh.serve(unique, huge)
    with pytest.raises(RemoteError, match="PayloadTooLarge"):
        await mesh.request(unique, {"value": 1}, 2)


async def test_a_request_whose_reply_subject_would_break_the_protocol_gets_no_reply(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    served: list[Envelope] = []

    async def echo(env: Envelope) -> Any:
        served.append(env)
        return env.payload

    await mesh.serve(unique, echo)
    bad = mesh.envelope(f"ephemeral:rpc.{unique}", "hi", reply_to="_INBOX.x\r\nPUB evil 0")
    out = mesh.encoder.encode_envelope(Channel.parse(f"ephemeral:rpc.{unique}"), bad)
    await mesh.nc.publish(names.rpc_subject(unique), out.data, headers=out.headers)
    await eventually(lambda: len(served) == 1)
    assert (await mesh.request(unique, "still serving")).payload == "still serving"


async def test_instances_serving_one_agent_share_the_requests_and_answer_each_once(
    mesh: Mesh, other_nc: Client, unique: str
) -> None:
    served: dict[str, list[int]] = {"a": [], "b": []}

    def server(name: str) -> Callable[[Envelope], Awaitable[Any]]:
        async def answer(env: Envelope) -> Any:
            served[name].append(env.payload)
            return name

        return answer

    async with Mesh(other_nc, agent="twin") as twin:
        await mesh.serve(unique, server("a"))
        await twin.serve(unique, server("b"))
        replies = [await mesh.request(unique, i) for i in range(200)]
    assert sorted(served["a"] + served["b"]) == list(range(200))  # each request answered once
    assert served["a"] and served["b"]  # and the queue group spread them
    assert [r.payload for r in replies].count("a") == len(served["a"])

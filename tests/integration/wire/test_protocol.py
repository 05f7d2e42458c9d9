"""mesh.wire.protocol against a real nats-server: what the hooks deliver is exactly what was sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError

from mesh.embedded import NatsServer
from mesh.wire import protocol
from mesh.wire.publisher import Pipeline, parse_puback
from mesh.wire.puller import Puller
from tests.helpers import unique


async def test_direct_inbox_gets_every_frame_byte_exact_in_order(nc: Client) -> None:
    got: list[tuple[bytes, bytes, bytes, bytes | None]] = []
    all_in = asyncio.Event()
    total = 3000

    def on_msg(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        got.append((subject, reply, data, headers))
        if len(got) == total:
            all_in.set()

    subject = f"protocol.{unique('direct')}"
    inbox = protocol.DirectInbox(nc, f"{subject}.*", on_msg)
    await inbox.start()
    sender = await nats_client_like(nc)
    # Sizes straddle the 32 KiB read buffer so frames split across reads.
    for i in range(total):
        body = bytes([i % 251]) * (i * 37 % 40_000)
        if i % 3 == 0:
            await sender.publish(f"{subject}.{i}", body, reply=f"r.{i}", headers={"K": str(i)})
        elif i % 3 == 1:
            await protocol.publish(sender, f"{subject}.{i}", body, "", protocol.encode_headers({"K": str(i)}))
        else:
            await protocol.publish(sender, f"{subject}.{i}", body)
    await sender.flush()
    async with asyncio.timeout(20):
        await all_in.wait()
    await inbox.stop()
    await sender.drain()
    for i, (subj, reply, data, headers) in enumerate(got):
        assert subj == f"{subject}.{i}".encode()
        assert data == bytes([i % 251]) * (i * 37 % 40_000)
        assert reply == (f"r.{i}".encode() if i % 3 == 0 else b"")
        if i % 3 == 2:
            assert headers is None
        else:
            assert headers is not None and protocol.parse_headers(headers) == {"K": str(i)}


async def nats_client_like(nc: Client) -> Client:
    """A second, hooked connection to the same server."""
    from mesh.wire.connection import connect

    url = f"nats://{nc.connected_url.hostname}:{nc.connected_url.port}"  # type: ignore[union-attr]
    return await connect(url, name="pytest-sender")


async def test_other_subscriptions_on_a_hooked_connection_are_untouched(nc: Client) -> None:
    subject = f"protocol.{unique('plain')}"
    sub = await nc.subscribe(subject)
    await protocol.publish(nc, subject, b"hello", "", protocol.encode_headers({"A": "b\r\nInjected: x"}))
    msg = await sub.next_msg(timeout=5)
    assert msg.data == b"hello" and msg.headers == {"A": "b  Injected: x"}  # no header injection
    await sub.unsubscribe()


async def test_pipeline_and_puller_survive_a_server_restart(tmp_path: object) -> None:
    from pathlib import Path

    from nats.js.api import RetentionPolicy, StreamConfig

    from mesh.provision import ensure_stream
    from mesh.wire.connection import connect, jetstream

    server = NatsServer(Path(str(tmp_path)) / "nats")
    server.start()
    try:
        nc = await connect(server.url, name="pytest-restart")
        js = await jetstream(nc)
        await ensure_stream(
            js, StreamConfig(name="LEAN", subjects=["protocol.q"], retention=RetentionPolicy.WORK_QUEUE)
        )
        await js.add_consumer("LEAN", durable_name="c", filter_subject="protocol.q")
        pipeline = Pipeline(nc)
        await pipeline.start()
        puller = Puller(nc, "LEAN", "c")
        await puller.start()
        assert parse_puback(await (await pipeline.request("protocol.q", b"before"))).seq == 1
        server.stop()
        server.start()  # same port, same store
        async with asyncio.timeout(20):
            while True:
                try:
                    ack = parse_puback(await (await pipeline.request("protocol.q", b"after")))
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        assert ack.seq == 2
        msgs = await puller.wait(2, 5)
        if len(msgs) < 2:
            msgs += await puller.wait(2 - len(msgs), 5)
        assert [m.data for m in msgs] == [b"before", b"after"]
        assert msgs[0].metadata.sequence.stream == 1
        for m in msgs:
            await pipeline.ack_sync(m)
        assert (await js.stream_info("LEAN")).state.messages == 0
        await puller.close()
        await pipeline.stop()
        await nc.drain()
    finally:
        server.stop()


@given(st.dictionaries(st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"), st.text(max_size=40), max_size=6))
def test_headers_round_trip(headers: dict[str, str]) -> None:
    # CR/LF would end the header line: they travel as spaces; edges are trimmed (bytes whitespace).
    newlines = str.maketrans({"\r": " ", "\n": " "})
    expected = {k: v.translate(newlines).encode().strip().decode() for k, v in headers.items()}
    assert protocol.parse_headers(protocol.encode_headers(headers)) == expected


def test_status_lines_parse_like_nats_py() -> None:
    assert protocol.parse_headers(b"NATS/1.0 404 No Messages\r\n\r\n") == {
        "Status": "404",
        "Description": "No Messages",
    }
    assert protocol.parse_headers(b"NATS/1.0 503\r\n\r\n") == {"Status": "503"}
    assert protocol.parse_headers(b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Stream: 7\r\n\r\n") == {
        "Status": "100", "Description": "Idle Heartbeat", "Nats-Last-Stream": "7",
    }  # fmt: skip


async def test_js_publish_through_the_pipeline_matches_nats_py(js: JetStreamContext, nc: Client) -> None:
    stream = unique("LEANJS").upper().replace("-", "_")
    await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    pipeline = Pipeline(nc)
    await pipeline.start()
    headers = {"Nats-Msg-Id": "one", "X-Tenant": "acme"}
    first = parse_puback(await (await pipeline.request(f"{stream.lower()}.a", b"x", headers)))
    again = parse_puback(await (await pipeline.request(f"{stream.lower()}.a", b"x", headers)))
    assert (first.seq, first.duplicate) == (1, False) and (again.seq, again.duplicate) == (1, True)
    stored = await js.get_msg(stream, 1)
    assert stored.data == b"x" and stored.headers == headers
    await pipeline.stop()
    await js.delete_stream(stream)


async def test_a_lost_reply_fails_after_the_pipeline_timeout_and_no_stream_says_so(nc: Client) -> None:
    silent = f"protocol.{unique('silent')}"
    sub = await nc.subscribe(silent)  # a responder that never answers: no 503, no reply
    pipeline = Pipeline(nc, timeout=0.3)
    await pipeline.start()
    lost = await pipeline.request(silent, b"x")
    async with asyncio.timeout(5):
        with pytest.raises(TimeoutError, match="no reply from NATS in time"):
            await lost
        with pytest.raises(NoStreamResponseError):
            await pipeline.publish(f"protocol.{unique('nowhere')}", b"x")
    assert not pipeline._pending
    await pipeline.stop()
    await sub.unsubscribe()


async def _work_queue(js: JetStreamContext, prefix: str, **consumer: Any) -> tuple[str, str]:
    """A fresh work-queue stream with one durable consumer ``c``: (stream, subject)."""
    stream = unique(prefix).upper().replace("-", "_")
    subject = f"{stream.lower()}.q"
    await js.add_stream(name=stream, subjects=[subject], retention="workqueue")
    await js.add_consumer(stream, durable_name="c", filter_subject=subject, **consumer)
    return stream, subject


async def test_acks_of_one_turn_share_one_confirmation_and_all_take_effect(
    js: JetStreamContext, nc: Client
) -> None:
    stream, subject = await _work_queue(js, "LEANACK", ack_wait=30)
    pipeline = Pipeline(nc)
    await pipeline.start()
    for i in range(50):
        parse_puback(await (await pipeline.request(subject, str(i).encode())))
    puller = Puller(nc, stream, "c")
    await puller.start()
    msgs: list[object] = []
    while len(msgs) < 50:
        msgs += await puller.wait(50 - len(msgs), 5)
    before = next(pipeline._ids)
    await asyncio.gather(*(pipeline.ack_sync(m) for m in msgs))  # type: ignore[arg-type]
    assert next(pipeline._ids) == before + 2  # one confirmation request for the 50 acks
    assert all(m._ackd for m in msgs)  # type: ignore[attr-defined]
    assert (await js.stream_info(stream)).state.messages == 0  # every ack took effect
    assert (await js.consumer_info(stream, "c")).num_ack_pending == 0
    await puller.close()
    await pipeline.stop()
    await js.delete_stream(stream)


async def test_waiting_on_open_pulls_adds_none_and_ends_at_their_deadline(
    js: JetStreamContext, nc: Client
) -> None:
    stream, subject = await _work_queue(js, "LEANARR")
    puller = Puller(nc, stream, "c")
    await puller.start()
    # A lingering pull whose waiter gives up stays open on the server.
    waiter = asyncio.ensure_future(puller.wait(1, expires=30))
    async with asyncio.timeout(5):
        while (await js.consumer_info(stream, "c")).num_waiting != 1:
            await asyncio.sleep(0.01)
    waiter.cancel()
    assert puller.outstanding == 1
    arrival = asyncio.ensure_future(puller.arrival(1))
    await js.publish(subject, b"late")
    async with asyncio.timeout(5):
        got = await arrival
    assert [m.data for m in got] == [b"late"]  # delivered to the open pull, none added
    assert (await js.consumer_info(stream, "c")).num_waiting == 0 and puller.outstanding == 0
    await puller.close()

    # A pull nobody will ever answer (no such stream: the server only says 503)
    # ends at its deadline instead of holding its waiter forever.
    orphan = Puller(nc, f"{stream}_GONE", "c")
    await orphan.start()
    waiter = asyncio.ensure_future(orphan.wait(1, expires=0.2))
    while not orphan.outstanding:  # until its request is out
        await asyncio.sleep(0)
    waiter.cancel()
    assert orphan.outstanding == 1
    async with asyncio.timeout(5):
        assert await orphan.arrival(1) == []
    assert orphan.outstanding == 0
    await orphan.close()
    await js.delete_stream(stream)

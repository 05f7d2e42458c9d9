"""mesh.wire.stream's continuous pull against a real nats-server."""

from __future__ import annotations

import asyncio
import json

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh.wire.stream import PullStream
from tests.helpers import eventually, unique


async def test_an_expired_request_is_topped_up_by_what_it_left_unfilled_only(
    js: JetStreamContext, nc: Client
) -> None:
    stream = unique("PULLSTREAM").upper().replace("-", "_")
    subject = f"{stream.lower()}.q"
    await js.add_stream(name=stream, subjects=[subject], retention="workqueue")
    await js.add_consumer(stream, durable_name="c", filter_subject=subject)
    for i in range(3):
        await js.publish(subject, str(i).encode())
    got: list[bytes] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg.data)
        await msg.ack()

    pull = PullStream(nc, stream, "c", on_msg, batch=4, expires_s=0.5)
    requests = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.c")  # ours, on this connection
    batches: list[int] = []

    async def three_requests() -> bool:
        while requests.pending_msgs:
            batches.append(json.loads((await requests.next_msg()).data)["batch"])
        return len(batches) >= 3

    await pull.start()
    try:
        await eventually(lambda: got == [b"0", b"1", b"2"], 5, "the three messages")
        await eventually(three_requests, 5, "the request after the first one expired")
        # 4 asked; 3 came, so 2 more at half; the first expired with 1 unfilled
        # (Nats-Pending-Messages): 2 are still asked for, so 2 more, not 4.
        assert batches[:3] == [4, 2, 2]
    finally:
        await pull.stop()
        await requests.unsubscribe()
        await js.delete_stream(stream)


async def test_stop_hands_every_message_received_before_it_to_on_msg_in_order(
    js: JetStreamContext, nc: Client
) -> None:
    stream = unique("PULLSTOP").upper().replace("-", "_")
    subject = f"{stream.lower()}.q"
    await js.add_stream(name=stream, subjects=[subject], retention="workqueue")
    await js.add_consumer(stream, durable_name="c", filter_subject=subject, ack_wait=30)
    release = asyncio.Event()
    got: list[bytes] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg.data)
        if msg.data == b"0":
            await release.wait()  # the message in hand while stop() is called
        await msg.nak()  # what a stopping owner does: hand it back

    pull = PullStream(nc, stream, "c", on_msg, batch=10, expires_s=5)
    await pull.start()
    try:
        for i in range(5):
            await js.publish(subject, str(i).encode())

        async def all_delivered() -> bool:
            return (await js.consumer_info(stream, "c")).num_ack_pending == 5

        await eventually(all_delivered, 5, "the five messages sent to us")
        stopping = asyncio.create_task(pull.stop())
        await asyncio.sleep(0)  # stop() sends its ping first: ours come back after it
        await nc.flush()
        await nc.flush()
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert got == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        release.set()
        await pull.stop()
        await js.delete_stream(stream)

"""mesh.wire.puller's PullInbox against a real nats-server: each status reply names its request."""

from __future__ import annotations

import json

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.wire.puller import PullInbox, PullStatus
from tests.helpers import eventually, unique


async def test_each_status_reply_is_read_once_and_names_the_request_it_ends(
    js: JetStreamContext, nc: Client
) -> None:
    stream = unique("PULLS").upper().replace("-", "_")
    subject = f"{stream.lower()}.q"
    await js.add_stream(name=stream, subjects=[subject], retention="workqueue")
    await js.add_consumer(stream, durable_name="c", filter_subject=subject)
    data: list[bytes] = []
    statuses: list[PullStatus] = []
    pulls = PullInbox(nc, stream, "c", lambda s, r, d, h: data.append(d), statuses.append)
    await pulls.start()
    requests = await nc.subscribe(pulls.subject)  # the requests as sent, on this same connection
    try:
        empty = "empty"
        await pulls.request(5, no_wait=True, token=empty)
        (no_messages,) = await eventually(lambda: [s for s in statuses if s.token == empty], 5, "404")
        assert (no_messages.code, no_messages.ended, no_messages.broken) == ("404", True, False)

        expired = "expired"
        await pulls.request(5, expires_s=0.2, token=expired)
        (timeout,) = await eventually(lambda: [s for s in statuses if s.token == expired], 5, "408")
        assert (timeout.code, timeout.ended, timeout.pending) == ("408", True, 5)  # all 5 unfilled

        await js.publish(subject, b"one")
        filled = "filled"
        await pulls.request(1, expires_s=5, heartbeat_s=1, token=filled)
        await eventually(lambda: data == [b"one"], 5, "the delivery")

        orphaned = "orphaned"
        await pulls.request(3, expires_s=30, token=orphaned)
        await eventually(lambda: _waiting(js, stream), 5, "the request open on the server")
        await js.delete_consumer(stream, "c")
        (gone,) = await eventually(lambda: [s for s in statuses if s.token == orphaned], 5, "409")
        assert (gone.code, gone.ended, gone.broken) == ("409", False, True)
        assert gone.description  # e.g. "Consumer Deleted"
        assert not [s for s in statuses if s.token == filled]  # a filled request gets no status

        bodies = [json.loads((await requests.next_msg(1)).data) for _ in range(4)]
        assert bodies == [
            {"batch": 5, "no_wait": True},
            {"batch": 5, "expires": 200_000_000},
            {"batch": 1, "expires": 5_000_000_000, "idle_heartbeat": 1_000_000_000},
            {"batch": 3, "expires": 30_000_000_000},
        ]
    finally:
        await requests.unsubscribe()
        await pulls.stop()
        await js.delete_stream(stream)


async def test_heartbeats_reach_the_status_callback_and_end_nothing(js: JetStreamContext, nc: Client) -> None:
    stream = unique("PULLHB").upper().replace("-", "_")
    subject = f"{stream.lower()}.q"
    await js.add_stream(name=stream, subjects=[subject], retention="workqueue")
    await js.add_consumer(stream, durable_name="c", filter_subject=subject)
    statuses: list[PullStatus] = []
    pulls = PullInbox(nc, stream, "c", lambda s, r, d, h: None, statuses.append)
    await pulls.start()
    try:
        token = "alive"
        await pulls.request(1, expires_s=5, heartbeat_s=0.1, token=token)
        beats = await eventually(lambda: [s for s in statuses if s.heartbeat], 5, "a heartbeat")
        assert beats[0].token == token and not beats[0].ended and not beats[0].broken
        assert (await js.consumer_info(stream, "c")).num_waiting == 1  # the request is still open
    finally:
        await pulls.stop()
        await js.delete_stream(stream)


async def _waiting(js: JetStreamContext, stream: str) -> bool:
    return (await js.consumer_info(stream, "c")).num_waiting == 1

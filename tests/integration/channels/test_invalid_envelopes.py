"""Bad messages are rejected with a reason and counted; they never stop a subscriber."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import msgpack
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from mesh.channels.errors import InvalidPayload
from mesh.channels.messaging import Mesh, MeshConfig
from mesh.channels.registry import Channel
from mesh.channels.subscriptions import DurableOptions
from mesh.envelope import CONTENT_TYPE, JSON, MSGPACK, Envelope, encode
from mesh.names import STREAM_DLQ, dlq_subject

Eventually = Callable[..., Awaitable[None]]


class FuelBurn(BaseModel):
    fuel: str
    litres: float = Field(gt=0)


def rejected(channel: str, reason: str) -> float:
    labels = {"channel": channel, "reason": reason}
    return REGISTRY.get_sample_value("af_mesh_rejected_total", labels) or 0.0


async def test_garbage_on_a_durable_channel_is_dead_lettered_and_the_subscriber_goes_on(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"durable:{unique}"
    got: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        got.append(env)

    dlq = await mesh.js.subscribe(dlq_subject("channels", unique), stream=STREAM_DLQ)
    await mesh.subscribe(channel, handle, options=DurableOptions(poll_s=1.0))
    subject = Channel.parse(channel).subject
    await mesh.js.publish(subject, b"{not json", headers={CONTENT_TYPE: JSON})
    await mesh.send_durable(channel, "valid")
    await eventually(lambda: len(got) == 1)
    letter = json.loads((await dlq.next_msg(timeout=5)).data)
    await dlq.unsubscribe()
    assert letter["reason"] == "rejected: decode_error"
    assert letter["errors"][0]["retryable"] is False
    assert [e.payload for e in got] == ["valid"]
    assert rejected(channel, "decode_error") == 1


async def test_unknown_schema_version_is_rejected_and_counted(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    got: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        got.append(env)

    await mesh.subscribe(channel, handle)
    future = Envelope(payload="from the future").model_dump(mode="json") | {"schema_version": 99}
    subject = Channel.parse(channel).subject
    await mesh.nc.publish(subject, json.dumps(future).encode(), headers={CONTENT_TYPE: JSON})
    await mesh.publish_event(channel, "current")
    await eventually(lambda: len(got) == 1)
    await eventually(lambda: rejected(channel, "unknown_schema_version") == 1)
    assert [e.payload for e in got] == ["current"]


async def test_payload_schema_is_enforced_at_send_and_at_receipt(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    mesh.schemas.register("fuel.burn", FuelBurn)
    got: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        got.append(env)

    await mesh.subscribe(channel, handle)
    with pytest.raises(InvalidPayload, match="litres"):
        await mesh.publish_event(channel, {"fuel": "diesel", "litres": -3}, type="fuel.burn")
    forged = Envelope(type="fuel.burn", payload={"fuel": "diesel"}, channel_type="EPHEMERAL")
    subject = Channel.parse(channel).subject
    await mesh.nc.publish(subject, encode(forged), headers={CONTENT_TYPE: JSON})
    await mesh.publish_event(channel, FuelBurn(fuel="diesel", litres=40), type="fuel.burn")
    await eventually(lambda: len(got) == 1)
    assert rejected(channel, "invalid_payload") == 1
    assert got[0].payload == FuelBurn(fuel="diesel", litres=40)


async def test_msgpack_channel_announces_its_content_type(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    packed = Mesh(mesh.nc, agent="packer", config=MeshConfig(codecs={channel: MSGPACK}))
    await packed.start()
    raw = await mesh.nc.subscribe(Channel.parse(channel).subject)
    got: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        got.append(env)

    await mesh.subscribe(channel, handle)
    await packed.publish_event(channel, {"bytes": 3})
    msg = await raw.next_msg(timeout=5)
    await raw.unsubscribe()
    await packed.stop()
    assert msg.headers is not None and msg.headers[CONTENT_TYPE] == MSGPACK
    assert msgpack.unpackb(msg.data)["payload"] == {"bytes": 3}
    await eventually(lambda: len(got) == 1)
    assert got[0].payload == {"bytes": 3}


async def test_expired_ephemeral_message_is_not_handled(
    mesh: Mesh, unique: str, eventually: Eventually
) -> None:
    channel = f"ephemeral:{unique}"
    got: list[Envelope] = []

    async def handle(env: Envelope) -> None:
        got.append(env)

    await mesh.subscribe(channel, handle)
    old = Envelope(payload="old", metadata={"ttl_s": 1}, created_at="2020-01-01T00:00:00Z")
    await mesh.nc.publish(Channel.parse(channel).subject, encode(old), headers={CONTENT_TYPE: JSON})
    await mesh.publish_event(channel, "fresh", ttl_s=60)
    await eventually(lambda: len(got) == 1)
    assert [e.payload for e in got] == ["fresh"]
    assert rejected(channel, "expired") == 1

"""The fast encoder and the validated envelope path put the same message on the wire."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.channels.encoder import Encoder, fast_id
from mesh.channels.registry import Channel
from mesh.channels.schemas import SchemaRegistry
from mesh.envelope import CONTENT_TYPE, JSON, MSGPACK, ChannelType, MessageType, Priority, decode
from mesh.errors import PayloadTooLarge
from mesh.trace import CORRELATION_HEADER, TRACEPARENT, trace_id_of
from mesh.wire.protocol import parse_headers


def _payloads(floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | floats
        | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=15,
    )


PAYLOADS = _payloads(st.floats(allow_nan=False, allow_infinity=False))
# NaN and infinities too: the JSON fast path must write them as the model does (null).
JSON_PAYLOADS = _payloads(st.floats())
CHANNELS = st.sampled_from(["durable:carbon.calculate", "ephemeral:agent.health"])


@settings(max_examples=200, deadline=None)
@given(
    PAYLOADS,
    CHANNELS,
    st.sampled_from([JSON, MSGPACK]),
    st.sampled_from(MessageType),
    st.none() | st.from_regex(r"\A[a-z0-9]{1,20}\Z"),
    st.sampled_from(Priority),
    st.none() | st.floats(min_value=0.5, max_value=3600),
    st.none() | st.text(min_size=1, max_size=128),
)
def test_fast_path_decodes_to_the_envelope_the_validated_path_builds(
    payload: Any,
    channel_text: str,
    codec: str,
    message_type: MessageType,
    tenant: str | None,
    priority: Priority,
    ttl_s: float | None,
    correlation_id: str | None,
) -> None:
    encoder = Encoder("fuel-agent", SchemaRegistry(), {channel_text: codec})
    channel = Channel.parse(channel_text)
    fields: dict[str, Any] = dict(
        type="fuel.burn", message_type=message_type, tenant=tenant, priority=priority,
        ttl_s=ttl_s, correlation_id=correlation_id,
    )  # fmt: skip
    out = encoder.encode(channel, payload, **fields)
    fast = decode(out.data, out.headers[CONTENT_TYPE])
    slow = encoder.envelope(channel, payload, channel_type=channel.kind, **fields)
    assert out.headers[CONTENT_TYPE] == codec
    assert fast.model_dump(exclude={"id", "created_at"}) == slow.model_dump(exclude={"id", "created_at"})
    assert out.id == fast.id and out.correlation_id == (correlation_id or fast.id)
    assert out.headers[CORRELATION_HEADER] == out.correlation_id
    assert TRACEPARENT in out.headers
    if channel.durable:
        assert out.headers["Nats-Msg-Id"] == fast.id
        assert ("Nats-TTL" in out.headers) == (ttl_s is not None)


def test_ttl_header_is_whole_seconds_of_at_least_one() -> None:
    encoder = Encoder(None, SchemaRegistry(), {})
    channel = Channel.parse("durable:x")
    assert encoder.encode(channel, 1, ttl_s=0.2).headers["Nats-TTL"] == "1"
    assert encoder.encode(channel, 1, ttl_s=2.5).headers["Nats-TTL"] == "3"


def test_limit_applies_to_both_paths() -> None:
    encoder = Encoder(None, SchemaRegistry(), {}, limit=500)
    channel = Channel.parse("ephemeral:x")
    with pytest.raises(PayloadTooLarge):
        encoder.encode(channel, "x" * 500)
    with pytest.raises(PayloadTooLarge):
        encoder.encode(channel, "x" * 500, id="custom-id")


def test_a_message_that_starts_a_trace_names_it_after_itself() -> None:
    encoder = Encoder(None, SchemaRegistry(), {})
    out = encoder.encode(Channel.parse("ephemeral:x"), 1)
    assert trace_id_of(out.headers) == out.id


@settings(max_examples=200, deadline=None)
@given(
    JSON_PAYLOADS,
    CHANNELS,
    st.sampled_from(MessageType),
    st.text(min_size=1, max_size=128),
    st.none() | st.from_regex(r"\A[a-z0-9]{1,20}\Z"),
    st.none() | st.floats(min_value=0.5, max_value=3600),
    st.none() | st.text(min_size=1, max_size=128),
    st.none() | st.text(min_size=1, max_size=128),
    st.none() | st.text(max_size=256),
)
def test_fast_path_writes_exactly_the_json_the_envelope_model_writes(
    payload: Any,
    channel_text: str,
    message_type: MessageType,
    type_name: str,
    tenant: str | None,
    ttl_s: float | None,
    correlation_id: str | None,
    causation_id: str | None,
    reply_to: str | None,
) -> None:
    encoder = Encoder("fuel-agent", SchemaRegistry(), {})
    out = encoder.encode(
        Channel.parse(channel_text), payload, type=type_name, message_type=message_type,
        tenant=tenant, ttl_s=ttl_s, correlation_id=correlation_id, causation_id=causation_id,
        reply_to=reply_to,
    )  # fmt: skip
    assert decode(out.data, JSON).model_dump_json().encode() == out.data


def test_fields_past_the_envelope_limits_are_refused_before_publish() -> None:
    encoder = Encoder(None, SchemaRegistry(), {})
    with pytest.raises(ValueError, match="reply_to"):
        encoder.encode(Channel.parse("ephemeral:x"), 1, reply_to="r" * 257)
    with pytest.raises(ValueError, match="target"):
        encoder.encode(Channel(ChannelType.EPHEMERAL, "rpc." + "a" * 300), 1)  # as rpc_channel builds


def test_ids_are_unique_random_hex_and_a_forked_child_draws_its_own() -> None:
    ids = [fast_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports the next id it would hand out
        os.write(write, fast_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != fast_id()


@settings(max_examples=200, deadline=None)
@given(
    CHANNELS,
    st.none() | st.text(min_size=1, max_size=128),
    st.none() | st.floats(min_value=0.5, max_value=3600),
)
def test_the_header_block_says_what_the_header_dict_says(
    channel_text: str, correlation_id: str | None, ttl_s: float | None
) -> None:
    out = Encoder("fuel-agent", SchemaRegistry(), {}).encode(
        Channel.parse(channel_text), 1, correlation_id=correlation_id, ttl_s=ttl_s
    )
    parsed = parse_headers(out.header_block)
    # CR and LF become spaces (as nats-py sends them); receivers trim ASCII whitespace.
    expected = {k: v.replace("\r", " ").replace("\n", " ").strip(" \t\v\f") for k, v in out.headers.items()}
    assert parsed == expected


def test_nan_and_infinity_in_a_payload_are_written_as_null() -> None:
    out = Encoder("fuel-agent", SchemaRegistry(), {}).encode(
        Channel.parse("ephemeral:x"), {"a": float("nan"), "b": [float("-inf")]}
    )
    assert b"NaN" not in out.data and b"Infinity" not in out.data
    assert decode(out.data, JSON).payload == {"a": None, "b": [None]}
    assert decode(out.data, JSON).model_dump_json().encode() == out.data


def test_a_nats_server_too_old_for_batches_and_schedules_is_refused_by_name() -> None:
    from mesh.errors import ConnectionFailed
    from mesh.wire.connection import check_server_version

    for ok in ("2.14.0", "2.15.1", "v2.15.1", "3.0.0", "2.16.0-beta.1", "dev"):
        check_server_version(ok)
    for old in ("2.11.3", "2.13.9", "v2.12.0"):
        with pytest.raises(ConnectionFailed, match=rf"nats-server {old} at nats://x is too old: .* 2\.14\.0"):
            check_server_version(old, "nats://x")


def test_a_nats_url_is_printed_without_its_password() -> None:
    from mesh.wire.connection import redacted

    assert redacted("nats://agent-factory:s3cr@t@127.0.0.1:4222") == "nats://agent-factory:***@127.0.0.1:4222"
    assert redacted("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert redacted("nats://s3cret-token@host:4222") == "nats://***@host:4222"  # a token is a secret too

"""Envelope codecs: JSON and MessagePack round-trip any envelope exactly (property tests)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.envelope import (
    JSON,
    MSGPACK,
    ChannelType,
    Envelope,
    MessageType,
    Metadata,
    Priority,
    decode,
    encode,
)
from mesh.errors import DecodeError, PayloadTooLarge, UnknownSchemaVersion

TOKEN = st.from_regex(r"\A[A-Za-z0-9_-]{1,40}\Z")
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
PAYLOADS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
METADATA = st.builds(
    Metadata,
    tenant=TOKEN,
    routing_key=st.none() | st.text(max_size=40),
    priority=st.sampled_from(Priority),
    ttl_s=st.none() | st.floats(min_value=0.001, max_value=86_400),
)
ENVELOPES = st.builds(
    Envelope,
    id=TOKEN,
    correlation_id=st.none() | st.text(max_size=128),
    causation_id=st.none() | st.text(max_size=128),
    source=st.none() | st.text(max_size=60),
    target=st.none() | st.text(max_size=60),
    message_type=st.sampled_from(MessageType),
    channel_type=st.sampled_from(ChannelType),
    type=st.text(min_size=1, max_size=40),
    payload=PAYLOADS,
    metadata=METADATA,
    created_at=st.datetimes(timezones=st.just(UTC)),
    reply_to=st.none() | st.text(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(ENVELOPES, st.sampled_from([JSON, MSGPACK]))
def test_every_envelope_survives_a_round_trip_through_either_codec(
    envelope: Envelope, content_type: str
) -> None:
    assert decode(encode(envelope, content_type), content_type) == envelope


@settings(max_examples=100, deadline=None)
@given(PAYLOADS)
def test_json_and_msgpack_decode_to_the_same_envelope(payload: Any) -> None:
    envelope = Envelope(payload=payload)
    assert decode(encode(envelope, JSON), JSON) == decode(encode(envelope, MSGPACK), MSGPACK)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([JSON, MSGPACK]))
def test_arbitrary_bytes_never_raise_anything_but_decode_error(data: bytes, ct: str) -> None:
    with contextlib.suppress(DecodeError):
        decode(data, ct)


@pytest.mark.parametrize("content_type", [JSON, MSGPACK])
def test_unknown_schema_version_is_named_in_the_error(content_type: str) -> None:
    raw = Envelope().model_dump(mode="json") | {"schema_version": 7}
    data = json.dumps(raw).encode() if content_type == JSON else msgpack.packb(raw)
    with pytest.raises(UnknownSchemaVersion, match="schema version"):
        decode(data, content_type)


def test_size_limit_is_checked_on_the_encoded_bytes() -> None:
    envelope = Envelope(payload="x" * 2000)
    assert len(encode(envelope, JSON, limit=4000)) < 4000
    with pytest.raises(PayloadTooLarge, match="limit is 1000 bytes"):
        encode(envelope, MSGPACK, limit=1000)

"""Name mapping and record encoding: reversible, and valid in every NATS grammar."""

from __future__ import annotations

import re

import faust
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.wire import protocol
from streams import naming
from streams.errors import UnsupportedGuarantee
from streams.records import decode_header_block, decode_headers, encode_headers, parse_reply
from streams.transport import Transport, TransportSettings

STREAM_NAME = re.compile(r"^[^\s.*>/\\]+$")
SUBJECT_TOKEN = re.compile(r"^[^\s.*>]+$")
KV_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")


@given(st.text(min_size=1, max_size=60))
def test_escape_is_reversible_and_fits_every_nats_name_grammar(topic: str) -> None:
    token = naming.escape(topic)
    assert naming.unescape(token) == topic
    assert STREAM_NAME.match(naming.stream_name(topic, 3))
    assert all(SUBJECT_TOKEN.match(t) for t in naming.partition_subject(topic, 3).split("."))
    assert KV_KEY.match(naming.offset_key(topic, 3))
    assert BUCKET.match(naming.offsets_bucket(topic)) and BUCKET.match(naming.group_bucket(topic))


@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_distinct_topics_never_share_a_stream(a: str, b: str) -> None:
    if a != b:
        assert naming.stream_name(a, 0) != naming.stream_name(b, 0)


def test_readable_topic_names_stay_readable() -> None:
    assert naming.stream_name("orders-changelog", 2) == "faust-orders-changelog-2"
    assert naming.partition_subject("orders-changelog", 2) == "faust.orders-changelog.2"
    assert naming.partition_subject("a.b_c", 0) == "faust.a_2eb_5fc.0"


@given(st.binary(max_size=40))
def test_key_subject_is_one_valid_token_per_key(key: bytes) -> None:
    token = naming.key_subject("t", 1, key).split(".")[-1]
    assert SUBJECT_TOKEN.match(token)


@given(
    key=st.one_of(st.none(), st.binary(max_size=40)),
    value=st.one_of(st.none(), st.binary(max_size=40)),
    timestamp=st.one_of(st.none(), st.floats(min_value=1, max_value=4e9)),
    headers=st.lists(st.tuples(st.text(min_size=1, max_size=10), st.binary(max_size=10)), max_size=3),
)
def test_record_headers_round_trip(
    key: bytes | None, value: bytes | None, timestamp: float | None, headers: list[tuple[str, bytes]]
) -> None:
    encoded = encode_headers(key, value, timestamp, headers)
    # As nats-py hands them over (a dict), and as the reader buffers them (the raw block).
    wire = protocol.encode_headers(encoded) if encoded else None
    for decoded in (decode_headers(encoded), decode_header_block(wire)):
        assert decoded.key == key
        assert decoded.is_null == (value is None)
        assert decoded.timestamp == timestamp
        assert decoded.headers == headers


def test_reply_subject_gives_offset_timestamp_and_pending() -> None:
    v1 = b"$JS.ACK.faust-orders-0.c1.1.42.40.1700000000000000000.7"
    v2 = b"$JS.ACK.hub.ACCHASH.faust-orders-0.c1.1.42.40.1700000000000000000.7.tok"
    assert parse_reply(v1) == parse_reply(v2) == (42, 1700000000000000000, 7)


def test_printable_keys_are_plain_text_for_the_nats_cli() -> None:
    assert encode_headers(b"user-42", b"v", None, None) == {"Faust-Key": "user-42"}


def test_broker_url_selects_this_transport_with_its_options() -> None:
    app = faust.App("naming-probe", broker="nats://127.0.0.1:4222?session_timeout=4&heartbeat=0.5")
    assert isinstance(app.transport, Transport)
    assert app.transport.settings == TransportSettings(
        servers=("nats://127.0.0.1:4222",), session_timeout_s=4.0, heartbeat_s=0.5
    )


def test_exactly_once_is_rejected_at_startup() -> None:
    app = faust.App("eos-probe", broker="nats://127.0.0.1:4222", processing_guarantee="exactly_once")
    with pytest.raises(UnsupportedGuarantee):
        _ = app.transport


def test_a_sourced_records_traceparent_is_handed_to_faust_as_a_record_header() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    # A finished event as the server sources it into af-executions: NATS headers, no Faust ones.
    wire = protocol.encode_headers({"Nats-Msg-Id": "finished-r-0", "traceparent": parent})
    assert decode_header_block(wire).headers == [("traceparent", parent.encode())]

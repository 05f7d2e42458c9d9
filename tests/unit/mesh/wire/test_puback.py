"""parse_puback's regex fast path must agree with the JSON reading of every PubAck."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.errors import APIError, NoStreamResponseError

from mesh.wire.publisher import PubAck, Reply, parse_puback


@given(
    stream=st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z"),
    seq=st.integers(min_value=1, max_value=2**63),
    duplicate=st.booleans(),
    domain=st.none() | st.from_regex(r"\A[a-z]{1,8}\Z"),
)
def test_every_puback_shape_reads_the_same_as_json(
    stream: str, seq: int, duplicate: bool, domain: str | None
) -> None:
    body: dict[str, object] = {"stream": stream}
    if domain is not None:
        body["domain"] = domain
    body["seq"] = seq
    if duplicate:
        body["duplicate"] = True
    data = json.dumps(body, separators=(",", ":")).encode()
    assert parse_puback(Reply(data)) == PubAck(stream, seq, duplicate)
    # The same content with other spacing goes the JSON way and agrees.
    assert parse_puback(Reply(json.dumps(body).encode())) == PubAck(stream, seq, duplicate)


def test_an_error_reply_raises_with_its_codes() -> None:
    data = b'{"error":{"code":503,"err_code":10077,"description":"subject full"},"stream":"S"}'
    with pytest.raises(APIError) as info:
        parse_puback(Reply(data))
    assert info.value.err_code == 10077 and info.value.code == 503


def test_a_status_only_reply_raises_no_stream_or_its_status() -> None:
    with pytest.raises(NoStreamResponseError):
        parse_puback(Reply(b"", b"NATS/1.0 503\r\n\r\n"))
    with pytest.raises(APIError) as info:
        parse_puback(Reply(b"", b"NATS/1.0 408 Request Timeout\r\n\r\n"))
    assert info.value.code == 408 and info.value.description == "Request Timeout"

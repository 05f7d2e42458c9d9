"""Encoding of Faust records as JetStream messages, and back.

The payload is the record value unchanged, so ``nats sub`` / ``nats stream view``
show it as is. Everything else travels in headers:

==================  =========================================================
``Faust-Key``       the key, when it is printable ASCII
``Faust-Key-B64``   the key otherwise (base64, ``-`` for the empty key)
``Faust-Null``      ``1`` when the value is ``None`` (a table tombstone)
``Faust-Ts``        the record timestamp in seconds, when the producer set one
``Faust-Headers``   the Faust headers, JSON ``[[name, base64 value], ...]``
``traceparent``     not written here; on a record the server sourced from another
                    stream (a finished event), it is the trace the record belongs
                    to, handed to Faust as the record header ``traceparent``
==================  =========================================================

A record without ``Faust-Ts`` takes the JetStream receive time as timestamp.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.trace import TRACEPARENT
from mesh.wire.protocol import ack_position, parse_headers

__all__ = ["decode_header_block", "decode_headers", "encode_headers", "parse_reply"]

_PRINTABLE = re.compile(rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")

KEY = "Faust-Key"
KEY_B64 = "Faust-Key-B64"
NULL = "Faust-Null"
TIMESTAMP = "Faust-Ts"
HEADERS = "Faust-Headers"


def encode_headers(
    key: bytes | None,
    value: bytes | None,
    timestamp: float | None,
    headers: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None,
) -> dict[str, str] | None:
    """NATS headers carrying everything of a Faust record except its value."""
    out: dict[str, str] = {}
    if key is not None:
        if _PRINTABLE.fullmatch(key):
            out[KEY] = key.decode("ascii")
        else:
            out[KEY_B64] = base64.b64encode(key).decode() or "-"
    if value is None:
        out[NULL] = "1"
    if timestamp:
        out[TIMESTAMP] = repr(float(timestamp))
    if headers:
        items = headers.items() if isinstance(headers, Mapping) else headers
        out[HEADERS] = json.dumps([[str(k), base64.b64encode(_as_bytes(v)).decode()] for k, v in items])
    return out or None


def _as_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode()


@dataclass(slots=True)
class DecodedHeaders:
    """A record's key, tombstone flag, timestamp and Faust headers, decoded."""

    key: bytes | None
    is_null: bool
    timestamp: float | None
    headers: list[tuple[str, bytes]]


def decode_headers(headers: Mapping[str, str] | None) -> DecodedHeaders:
    """Inverse of :func:`encode_headers`."""
    if not headers:
        return DecodedHeaders(None, False, None, [])
    key: bytes | None = None
    if KEY in headers:
        key = headers[KEY].encode("ascii")
    elif KEY_B64 in headers:
        raw = headers[KEY_B64]
        key = b"" if raw == "-" else base64.b64decode(raw)
    ts = headers.get(TIMESTAMP)
    user = headers.get(HEADERS)
    decoded = [(k, base64.b64decode(v)) for k, v in json.loads(user)] if user else []
    parent = headers.get(TRACEPARENT)
    if parent is not None:
        decoded.append((TRACEPARENT, parent.encode()))
    return DecodedHeaders(
        key=key,
        is_null=headers.get(NULL) == "1",
        timestamp=float(ts) if ts else None,
        headers=decoded,
    )


def decode_header_block(raw: bytes | None) -> DecodedHeaders:
    """:func:`decode_headers` of a raw ``NATS/1.0`` header block, as the reader buffers it."""
    return decode_headers(parse_headers(raw) if raw else None)


def parse_reply(reply: bytes) -> tuple[int, int, int]:
    """Stream sequence, timestamp (ns) and pending count from a JetStream delivery's
    reply subject (:func:`mesh.wire.protocol.ack_position`, both layouts)."""
    position = ack_position(reply)
    if position is None:
        raise ValueError(f"not a JetStream ack subject: {reply[:200]!r}")
    return position

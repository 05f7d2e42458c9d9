"""What a mesh message is on the wire: envelope bytes plus headers.

:class:`Encoder` turns a payload and its routing facts into the bytes and
headers that a publish sends. The common case (generated id, caller fields
within the envelope's limits) writes the envelope's JSON from parts: what is
fixed per sender, channel and type is serialized once and cached, per message
only the ids, the payload and the time are. The bytes are exactly what
``Envelope.model_dump_json`` writes (a property test holds them to it);
anything unusual takes the validated path through the model.

Headers on every message: ``Content-Type``, ``traceparent`` (and
``tracestate``), ``AF-Correlation-Id``; on durable channels also
``Nats-Msg-Id`` (the envelope id: JetStream deduplicates re-sends) and
``Nats-TTL`` when the message has a TTL (whole seconds, at least 1). They come
both as a dict (for nats-py's JetStream calls) and as the encoded NATS header
block (for :func:`mesh.wire.protocol.publish` on core NATS).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import msgpack
import pydantic_core

from mesh import trace
from mesh.channels.registry import Channel
from mesh.channels.schemas import SchemaRegistry
from mesh.channels.subscriptions import current_envelope
from mesh.envelope import (
    CONTENT_TYPE,
    JSON,
    MSGPACK,
    SCHEMA_VERSION,
    ChannelType,
    Envelope,
    MessageType,
    Metadata,
    Priority,
    encode,
)
from mesh.errors import DecodeError, PayloadTooLarge
from mesh.trace import CORRELATION_HEADER, TRACEPARENT, TRACESTATE
from mesh.wire.protocol import encode_headers

__all__ = ["Encoder", "Outgoing", "fast_id"]

_DEFAULT_METADATA: Final = Metadata()
_MAX_ID_FIELD: Final = 128
_MAX_NAME_FIELD: Final = 256
_MAX_FIXED_JSON: Final = 4096  # cached JSON fragments per sender (channel x type pairs)
_to_json: Final = pydantic_core.to_json
_NULL: Final = b"null"
_NO_REPLY: Final = b',"reply_to":null}'
_DEFAULT_METADATA_JSON: Final = (
    b',"metadata":' + _DEFAULT_METADATA.model_dump_json().encode() + b',"created_at":'
)


_IDS_PER_READ: Final = 256


def _id_pool() -> Iterator[str]:
    """Ids cut from one ``os.urandom`` read per 256: a system call per id is most of its cost."""
    while True:
        block = os.urandom(16 * _IDS_PER_READ).hex()
        for start in range(0, 32 * _IDS_PER_READ, 32):
            yield block[start : start + 32]


_ids = _id_pool()


def _new_pool_after_fork() -> None:
    global _ids
    _ids = _id_pool()  # a forked child must not hand out its parent's remaining ids


os.register_at_fork(after_in_child=_new_pool_after_fork)


def fast_id() -> str:
    """Like :func:`~mesh.envelope.new_id` (32 random hex chars from ``os.urandom``), cheaper."""
    return next(_ids)


class Outgoing(NamedTuple):  # a tuple: the cheapest immutable record to build per message
    data: bytes
    headers: dict[str, str]
    id: str
    correlation_id: str
    header_block: bytes  # ``headers`` as the NATS header block, for mesh.wire.protocol.publish


class Encoder:
    """Encodes messages for one sender (``source``) with its codecs and size limit."""

    def __init__(
        self,
        source: str | None,
        schemas: SchemaRegistry,
        codecs: Mapping[str, str],
        default_codec: str = JSON,
        limit: int = 1_000_000,
    ) -> None:
        Envelope(source=source)  # refuse a bad agent name now, not on the first send
        if default_codec not in (JSON, MSGPACK):
            raise DecodeError(f"unsupported content type {default_codec!r}")
        self.source = source
        self.schemas = schemas
        self.codecs = dict(codecs)
        self.default_codec = default_codec
        self.limit = limit
        self._fixed_json: dict[tuple[str, MessageType, str], bytes] = {}

    def content_type(self, channel: Channel) -> str:
        codecs = self.codecs
        return codecs.get(channel.text, self.default_codec) if codecs else self.default_codec

    def envelope(
        self,
        target: Channel | str,
        payload: Any,
        *,
        type: str = "message",
        message_type: MessageType = MessageType.EVENT,
        channel_type: ChannelType = ChannelType.EPHEMERAL,
        tenant: str | None = None,
        priority: Priority = Priority.NORMAL,
        ttl_s: float | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        id: str | None = None,
    ) -> Envelope:
        """A validated envelope; inside a handler it inherits correlation, causation, tenant."""
        correlation_id, causation_id, tenant = _inherited(correlation_id, causation_id, tenant)
        return Envelope(
            id=id or fast_id(),
            correlation_id=correlation_id,
            causation_id=causation_id,
            source=self.source,
            target=target.text if isinstance(target, Channel) else target,
            message_type=message_type,
            channel_type=channel_type,
            type=type,
            payload=self.schemas.validate(type, payload),
            metadata=_metadata(tenant, priority, ttl_s),
            reply_to=reply_to,
        )

    def encode(
        self,
        channel: Channel,
        payload: Any,
        *,
        type: str = "message",
        message_type: MessageType = MessageType.EVENT,
        tenant: str | None = None,
        priority: Priority = Priority.NORMAL,
        ttl_s: float | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        reply_to: str | None = None,
        id: str | None = None,
    ) -> Outgoing:
        """Bytes and headers for ``payload`` on ``channel``; raises before any publish."""
        parent = current_envelope.get()
        if parent is not None:  # inside a handler: continue its correlation, causation, tenant
            correlation_id = correlation_id or parent.correlation_id or parent.id
            causation_id = causation_id or parent.id
            tenant = tenant or parent.metadata.tenant
        if (
            id is not None
            or not 0 < len(type) <= _MAX_ID_FIELD
            or (correlation_id is not None and len(correlation_id) > _MAX_ID_FIELD)
            or (causation_id is not None and len(causation_id) > _MAX_ID_FIELD)
            or (reply_to is not None and len(reply_to) > _MAX_NAME_FIELD)
            or len(channel.text) > _MAX_NAME_FIELD
        ):  # unusual fields: let the model validate them and say what is wrong
            envelope = self.envelope(
                channel, payload, type=type, message_type=message_type,
                channel_type=channel.kind, tenant=tenant, priority=priority, ttl_s=ttl_s,
                correlation_id=correlation_id, causation_id=causation_id, reply_to=reply_to, id=id,
            )  # fmt: skip
            return self.encode_envelope(channel, envelope)
        if (tenant is None or tenant == "default") and priority is Priority.NORMAL and ttl_s is None:
            metadata = None  # the default metadata, pre-serialized
        else:
            metadata = Metadata(tenant=tenant or "default", priority=priority, ttl_s=ttl_s)
        envelope_id = fast_id()  # 32 lowercase hex: also names the trace when this starts one
        payload = self.schemas.validate(type, payload)
        codecs = self.codecs
        content_type = codecs.get(channel.text, self.default_codec) if codecs else self.default_codec
        try:
            if content_type == JSON:
                # The envelope's own field order and JSON format, from parts: only the
                # ids, the payload and the time are serialized per message.
                key = (channel.text, message_type, type)
                data = b"".join((
                    b'{"schema_version":1,"id":"', envelope_id.encode(),
                    b'","correlation_id":', _NULL if correlation_id is None else _to_json(correlation_id),
                    b',"causation_id":', _NULL if causation_id is None else _to_json(causation_id),
                    self._fixed_json.get(key) or self._fixed(key, channel),
                    _to_json(payload, inf_nan_mode="null"),  # as the model writes NaN/inf: null
                    _DEFAULT_METADATA_JSON if metadata is None else b"".join(
                        (b',"metadata":', _to_json(metadata), b',"created_at":')
                    ),
                    _to_json(datetime.now(UTC)),
                    _NO_REPLY if reply_to is None else b"".join((b',"reply_to":', _to_json(reply_to), b"}")),
                ))  # fmt: skip
            else:  # off the common path: a call more costs nothing worth counting
                data = self._msgpack(channel, message_type, type, envelope_id, correlation_id, causation_id,
                                     payload, metadata, reply_to)  # fmt: skip
        except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
            raise DecodeError(f"payload of type {type!r} cannot be serialized: {exc}") from exc
        if len(data) > self.limit:
            raise PayloadTooLarge(len(data), self.limit)
        correlation = correlation_id or envelope_id
        traceparent, tracestate = trace.outgoing(envelope_id)
        if tracestate or channel.durable or "\r" in correlation or "\n" in correlation:
            return _outgoing(channel, data, content_type, envelope_id, correlation, ttl_s,
                             traceparent, tracestate)  # fmt: skip
        headers = {CONTENT_TYPE: content_type, TRACEPARENT: traceparent, CORRELATION_HEADER: correlation}
        block = (  # the common case, in one format
            f"NATS/1.0\r\n{CONTENT_TYPE}: {content_type}\r\n{TRACEPARENT}: {traceparent}\r\n"
            f"{CORRELATION_HEADER}: {correlation}\r\n\r\n"
        ).encode()
        return Outgoing(data, headers, envelope_id, correlation, block)

    def _msgpack(
        self, channel: Channel, message_type: MessageType, type: str, envelope_id: str,
        correlation_id: str | None, causation_id: str | None, payload: Any, metadata: Metadata | None,
        reply_to: str | None,
    ) -> bytes:  # fmt: skip
        doc = {
            "schema_version": SCHEMA_VERSION,
            "id": envelope_id,
            "correlation_id": correlation_id,
            "causation_id": causation_id,
            "source": self.source,
            "target": channel.text,
            "message_type": message_type.value,
            "channel_type": channel.kind.value,
            "type": type,
            "payload": payload,
            "metadata": (metadata or _DEFAULT_METADATA).model_dump(mode="json"),
            "created_at": datetime.now(UTC),
            "reply_to": reply_to,
        }
        data: bytes = msgpack.packb(pydantic_core.to_jsonable_python(doc), use_bin_type=True)
        return data

    def _fixed(self, key: tuple[str, MessageType, str], channel: Channel) -> bytes:
        """The JSON between ``causation_id`` and the payload: the same for every message
        this sender sends with one channel, message type and payload type."""
        text, message_type, type = key
        fixed = b"".join((
            b',"source":', _to_json(self.source), b',"target":', _to_json(text),
            b',"message_type":', _to_json(message_type.value),
            b',"channel_type":', _to_json(channel.kind.value),
            b',"type":', _to_json(type), b',"payload":',
        ))  # fmt: skip
        if len(self._fixed_json) < _MAX_FIXED_JSON:
            self._fixed_json[key] = fixed
        return fixed

    def encode_envelope(self, channel: Channel, envelope: Envelope) -> Outgoing:
        """Bytes and headers for an envelope built elsewhere (replies, re-sends)."""
        content_type = self.content_type(channel)
        data = encode(envelope, content_type, self.limit)
        correlation = envelope.correlation_id or envelope.id
        headers = self._headers(channel, content_type, envelope.id, correlation, envelope.metadata.ttl_s)
        return Outgoing(data, headers, envelope.id, correlation, encode_headers(headers))

    @staticmethod
    def _headers(
        channel: Channel,
        content_type: str,
        envelope_id: str,
        correlation: str,
        ttl_s: float | None,
    ) -> dict[str, str]:
        headers = {CONTENT_TYPE: content_type}
        trace.inject(headers, correlation)
        if channel.durable:
            headers["Nats-Msg-Id"] = envelope_id
            if ttl_s is not None:
                headers["Nats-TTL"] = str(max(1, math.ceil(ttl_s)))
        return headers


def _outgoing(
    channel: Channel, data: bytes, content_type: str, envelope_id: str, correlation: str,
    ttl_s: float | None, traceparent: str, tracestate: str | None,
) -> Outgoing:  # fmt: skip
    """A message of :meth:`Encoder.encode` whose headers are more than the common
    block: a durable channel's (``Nats-Msg-Id``, ``Nats-TTL``), a trace state, or a
    correlation id the block cannot carry."""
    headers = {CONTENT_TYPE: content_type, TRACEPARENT: traceparent, CORRELATION_HEADER: correlation}
    if tracestate:
        headers[TRACESTATE] = tracestate
    if channel.durable:
        headers["Nats-Msg-Id"] = envelope_id
        if ttl_s is not None:
            headers["Nats-TTL"] = str(max(1, math.ceil(ttl_s)))
    return Outgoing(data, headers, envelope_id, correlation, encode_headers(headers))


def _metadata(tenant: str | None, priority: Priority, ttl_s: float | None) -> Metadata:
    if tenant is None and priority is Priority.NORMAL and ttl_s is None:
        return _DEFAULT_METADATA  # frozen, so one instance serves every message
    return Metadata(tenant=tenant or "default", priority=priority, ttl_s=ttl_s)


def _inherited(
    correlation_id: str | None, causation_id: str | None, tenant: str | None
) -> tuple[str | None, str | None, str | None]:
    """Inside a handler, a new message continues the handled one's correlation,
    causation and tenant unless the caller set them."""
    parent = current_envelope.get()
    if parent is None:
        return correlation_id, causation_id, tenant
    return (
        correlation_id or parent.correlation_id or parent.id,
        causation_id or parent.id,
        tenant or parent.metadata.tenant,
    )

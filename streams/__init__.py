"""Faust stream processing on NATS JetStream.

``faust.App("metering", broker="nats://127.0.0.1:4222")`` selects
:class:`streams.transport.Transport` through the ``faust.transports`` entry
point. See ``docs/streams.md`` for the layout and guarantees, and
:mod:`streams.processors` for the processors that run on it.

Names load on first use: importing ``streams.processors`` (the CLI does, for
the processor names) does not load Faust.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from streams.errors import StreamsError, TopicNotFound, UnsupportedGuarantee
    from streams.naming import key_subject, partition_subject, stream_name
    from streams.partitioner import partition_for
    from streams.transport import Transport, TransportSettings

__all__ = [
    "StreamsError",
    "TopicNotFound",
    "Transport",
    "TransportSettings",
    "UnsupportedGuarantee",
    "key_subject",
    "partition_for",
    "partition_subject",
    "stream_name",
]

_WHERE = {
    "StreamsError": "streams.errors",
    "TopicNotFound": "streams.errors",
    "UnsupportedGuarantee": "streams.errors",
    "key_subject": "streams.naming",
    "partition_subject": "streams.naming",
    "stream_name": "streams.naming",
    "partition_for": "streams.partitioner",
    "Transport": "streams.transport",
    "TransportSettings": "streams.transport",
}
__getattr__ = lazy_exports(__name__, _WHERE)

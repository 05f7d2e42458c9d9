"""Faust stream processing on NATS JetStream.

``faust.App("metering", broker="nats://127.0.0.1:4222")`` selects
:class:`streams.transport.Transport` through the ``faust.transports`` entry
point. See ``docs/streams.md`` for the layout and guarantees.
"""

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

"""Errors raised by the Faust-on-JetStream transport."""

from __future__ import annotations

from mesh.errors import ConnectionFailed

__all__ = ["ConnectionFailed", "StreamsError", "TopicNotFound", "UnsupportedGuarantee"]


class StreamsError(Exception):
    """Base of every error raised by :mod:`streams`."""


class TopicNotFound(StreamsError):
    """A topic was used before anything declared it (no metadata in ``faust-topics``)."""


class UnsupportedGuarantee(StreamsError):
    """``processing_guarantee="exactly_once"`` needs Kafka transactions; JetStream has none."""

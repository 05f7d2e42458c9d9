"""Errors raised by named channels, the messaging API and request/reply."""

from __future__ import annotations

from mesh.errors import DecodeError, MeshError, RequestTimeout

__all__ = [
    "InvalidChannelName",
    "InvalidPayload",
    "NoResponders",
    "RejectMessage",
    "RemoteError",
    "TooManySubscribers",
]


class InvalidChannelName(MeshError):
    """A channel name does not follow ``durable:a.b`` / ``ephemeral:a.b`` rules."""

    status = 400


class InvalidPayload(DecodeError):
    """A payload does not match the schema registered for its message type."""

    def __init__(self, type_name: str, detail: str) -> None:
        super().__init__(f"payload of type {type_name!r} is invalid: {detail}")
        self.type_name = type_name
        self.detail = detail


class TooManySubscribers(MeshError):
    status = 429

    def __init__(self, channel: str, limit: int) -> None:
        super().__init__(f"channel {channel!r} already has its maximum of {limit} subscribers")
        self.channel = channel
        self.limit = limit


class NoResponders(RequestTimeout):
    """Nobody serves the target agent right now (fails fast, before the timeout)."""

    status = 503

    def __init__(self, target: str) -> None:
        super().__init__(f"no agent is serving requests for {target!r}")
        self.target = target


class RemoteError(MeshError):
    """The serving agent's handler raised; the reply carries its error."""

    status = 502

    def __init__(self, target: str, error_type: str, error: str) -> None:
        super().__init__(f"agent {target!r} failed the request: {error_type}: {error}")
        self.target = target
        self.error_type = error_type
        self.error = error


class RejectMessage(MeshError):
    """Raised by a durable handler for a message that must not be retried: it is
    dead-lettered at once."""

    status = 422

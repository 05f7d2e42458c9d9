"""Errors of the mesh layer. Each carries what a caller needs to act on it."""

from __future__ import annotations

from datetime import datetime
from typing import Final

__all__ = [
    "BatchRejected",
    "BreakerOpen",
    "ConnectionFailed",
    "DecodeError",
    "EnqueueOutcomeUnknown",
    "IdempotencyKeyReused",
    "InvalidTask",
    "MeshError",
    "PayloadTooLarge",
    "PermanentError",
    "QueueFull",
    "RequestTimeout",
    "RunAlreadyFinished",
    "StreamUnavailable",
    "UnknownSchemaVersion",
    "WRONG_LAST_SEQUENCE",
]

#: JetStream's answers when a ``Nats-Expected-Last-Subject-Sequence`` does not hold
#: (a compare-and-set lost): 10071 from a single server ("wrong last sequence: N"),
#: 10164 from a clustered stream's leader ("wrong last sequence", checked before
#: it proposes the write). Every compare-and-set site tests membership.
WRONG_LAST_SEQUENCE: Final = frozenset({10071, 10164})


class MeshError(Exception):
    """Base of every error raised by ``mesh``."""

    status = 503  # HTTP status the gateway maps it to


class ConnectionFailed(MeshError):
    """NATS is unreachable or JetStream is disabled."""


class DecodeError(MeshError):
    """A message could not be decoded or validated."""

    status = 400


class UnknownSchemaVersion(DecodeError):
    """An envelope carries a schema version this build does not understand."""


class PayloadTooLarge(MeshError):
    status = 413

    def __init__(self, size: int, limit: int | None, what: str = "payload") -> None:
        bound = f"the limit is {limit} bytes" if limit else "more than the NATS max payload"
        super().__init__(f"{what} is {size} bytes, {bound}")
        self.size = size
        self.limit = limit


class QueueFull(MeshError):
    status = 429

    def __init__(self, agent: str, priority: int, limit: int) -> None:
        super().__init__(
            f"queue for agent {agent!r} at priority {priority} is full ({limit} tasks waiting); retry later"
        )
        self.agent = agent
        self.priority = priority
        self.limit = limit


class InvalidTask(MeshError):
    """A task that can never be enqueued as given (e.g. a malformed agent key)."""

    status = 422


class BatchRejected(MeshError):
    """A batch was refused as a whole; none of its tasks was enqueued."""

    status = 422


class EnqueueOutcomeUnknown(MeshError):
    """NATS never answered a publish: the task (or batch) may or may not be
    stored. Not a rejection: retry with the same idempotency key or batch_key,
    which returns the stored run if there is one and stores it once if not."""

    status = 503


class StreamUnavailable(MeshError):
    """JetStream kept answering 503 to a write: no server of the stream took it
    (a leader election that outlasted the client's patience, or too few of the
    stream's replicas up). Nothing was stored: retrying later is safe."""

    status = 503

    def __init__(self, what: str, waited_s: float) -> None:
        super().__init__(
            f"no JetStream server took the write to {what} for {waited_s:.1f} s (a stream leader "
            "is being elected, or too few of its replicas are up); nothing was stored: retry"
        )
        self.what, self.waited_s = what, waited_s


class IdempotencyKeyReused(MeshError):
    """An idempotency key (or ``batch_key``) came back with a different request:
    another agent or another input. Refused rather than answered with the run
    the key names, which would silently drop the new request."""

    status = 409

    def __init__(self, key: str, run_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was used for run {run_id} with another agent or input; "
            "use a new key for a new request"
        )
        self.key, self.run_id = key, run_id


class RunAlreadyFinished(MeshError):
    """A cancel came after the run's outcome: nothing is left to stop."""

    status = 409

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(f"run {run_id} already finished: {status}")
        self.run_id, self.run_status = run_id, status


class BreakerOpen(MeshError):
    """The agent's circuit breaker is open: its tasks wait in the queue, a caller
    waiting for a result would wait at least until ``open_until`` (None: until an
    operator closes it)."""

    status = 503

    def __init__(self, agent: str, open_until: datetime | None, reason: str) -> None:
        until = f"until {open_until.isoformat()}" if open_until else "until an operator closes it"
        super().__init__(f"the circuit breaker of {agent} is open {until}: {reason}")
        self.agent, self.open_until, self.reason = agent, open_until, reason


class RequestTimeout(MeshError):
    status = 504


class PermanentError(Exception):
    """Raised by a handler (an agent's ``run``) for an error no retry can fix (bad input, a bug)."""

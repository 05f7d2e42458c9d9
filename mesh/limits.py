"""Size limits that keep every message the queue writes under the NATS max payload.

A task is accepted only if its outcome event and its dead letter will fit
too, whatever the handler returns and however often it fails; otherwise an
oversized outcome could not be written, and a task whose outcome cannot be
written would run again and again. With the server's max payload ``M``
(1 MiB by default):

* a task (the serialized envelope) is at most ``M / 2``: its dead letter
  carries it base64-encoded (4/3 of it) next to the attempt history;
* a result is at most ``M / 4``: the finished event carries the input
  (within the task's half) and the result;
* the attempt errors an event or a dead letter carries total at most
  32 KiB (:func:`mesh.deadletters.bounded_errors` trims them).

A larger result fails the run permanently with :class:`ResultTooLarge`.
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = ["ERRORS_BUDGET", "PayloadLimits", "ResultTooLarge"]

DEFAULT_MAX_PAYLOAD: Final = 1_048_576  # nats-server's default max_payload
ERRORS_BUDGET: Final = 32 * 1024  # bytes of attempt errors in one event or dead letter
MAX_ERROR_CHARS: Final = 8000  # one attempt's error text


class ResultTooLarge(Exception):
    """A handler returned a result larger than an outcome event may carry."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"result is {size} bytes serialized, the limit is {limit} bytes (a quarter of the "
            "NATS max payload); return a reference (e.g. an object store key) instead"
        )
        self.size, self.limit = size, limit


class PayloadLimits(NamedTuple):
    """The limits derived from the server's max payload (``nc.max_payload``)."""

    max_payload: int = DEFAULT_MAX_PAYLOAD

    @property
    def task(self) -> int:
        return self.max_payload // 2

    @property
    def result(self) -> int:
        return self.max_payload // 4

    @classmethod
    def of(cls, max_payload: int | None) -> PayloadLimits:
        return cls(max_payload or DEFAULT_MAX_PAYLOAD)

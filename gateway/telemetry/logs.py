"""Log lines: one per event, naming the run, agent, tenant, correlation id and trace
they belong to; on stderr (text for people in the embedded dev mode, JSON
otherwise) and into the ``AF_LOGS`` stream, so ``agent-factory logs`` shows the
whole fleet's without a shell on each worker.

Guarantee, or rather its absence: the stream is best effort. A record is put in
a bounded buffer by the thread that logs it (never blocking it: no I/O, no
lock held across a publish) and published from there by a background task
about every 100 ms; when the buffer is full, or NATS is away, records are
dropped and counted, and the count is published as a record of its own once
there is room again. stderr keeps every line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from nats.aio.client import Client

from mesh import names, trace

if TYPE_CHECKING:
    from gateway.settings import Settings

__all__ = ["JsonFormatter", "LogStream", "TextFormatter", "configure_logging", "log_fields", "log_stream"]

FLUSH_S: Final = 0.1
#: Loggers that write to stderr on their own instead of through the root logger (they
#: do not propagate), whose records belong in the stream all the same.
ACCESS_LOGGER: Final = "gateway.access"
OWN_STDERR: Final = (ACCESS_LOGGER,)
# What a LogRecord holds anyway: anything else on a record came from ``extra=`` and is kept.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def log_fields(record: logging.LogRecord, process: str) -> dict[str, Any]:
    """The record as the JSON object a line holds (read in the logging thread, so
    the run labels and trace ids are the ones current where it was logged)."""
    fields: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname, "logger": record.name, "msg": record.getMessage(), "process": process,
    }  # fmt: skip
    labels = trace.run_labels.get()
    if labels is not None:
        fields.update(run_id=labels.run_id, agent=labels.agent, tenant=labels.tenant, attempt=labels.attempt)
        if labels.correlation_id is not None:
            fields["correlation_id"] = labels.correlation_id
    ids = trace.current_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    for key, value in vars(record).items():
        if key not in _STANDARD and key not in fields:
            fields[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object a line (:func:`log_fields`)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(log_fields(record, self.process), default=str)


class TextFormatter(logging.Formatter):
    """For people: time, level, logger, message, then the run it is about."""

    def __init__(self, process: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        labels = trace.run_labels.get()
        if labels is None:
            return line
        ids = trace.current_ids()
        traced = f" trace={ids[0]}" if ids else ""
        return f"{line}  [{labels.agent} run={labels.run_id} tenant={labels.tenant}{traced}]"


def configure_logging(settings: Settings, process: str) -> None:
    """This process's stderr: text in the embedded dev mode, JSON otherwise (as the
    settings say), at the settings' level. Replaces the root logger's handlers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, LogStream):
            root.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter(process) if settings.log_json else TextFormatter(process))
    root.addHandler(stderr)
    root.setLevel(settings.log_level.upper())


class LogStream(logging.Handler):
    """Publishes records (JSON) to ``af.logs.<process>`` from a bounded buffer;
    :meth:`start` and :meth:`stop` own its publishing task."""

    def __init__(self, process: str, capacity: int = 10_000) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter(process))
        self.subject = names.log_subject(process)
        self.capacity = capacity
        self.dropped = 0  # records dropped since the process started
        self._reported = 0  # of which a record was published
        self._buffer: deque[bytes] = deque()
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # deque.append and len are atomic: any thread may log, none waits here.
        if len(self._buffer) >= self.capacity:
            self.dropped += 1
            return
        try:
            self._buffer.append(self.format(record).encode())
        except Exception:
            self.handleError(record)

    def attach(self) -> None:
        """Receive the process's records: the root logger's, and those of :data:`OWN_STDERR`."""
        for name in ("", *OWN_STDERR):
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in ("", *OWN_STDERR):
            logging.getLogger(name).removeHandler(self)

    async def start(self, nc: Client) -> None:
        self._nc = nc
        self._task = asyncio.create_task(self._publish_forever(), name="log-stream")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush_now()

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush_now()
            except Exception:  # NATS away: these records are lost, not the process
                self.dropped += len(self._buffer)
                self._buffer.clear()

    async def flush_now(self) -> None:
        """Publish what the buffer holds (core publishes: the stream stores them)."""
        nc, buffer = self._nc, self._buffer
        if nc is None or nc.is_closed:
            return
        if self.dropped > self._reported:
            lost, self._reported = self.dropped - self._reported, self.dropped
            why = "%d log records dropped (buffer full or NATS away)"
            note = logging.LogRecord("gateway.telemetry", logging.WARNING, __file__, 0, why, (lost,), None)
            note.dropped = lost
            await nc.publish(self.subject, self.format(note).encode())
        while buffer:
            await nc.publish(self.subject, buffer.popleft())


@asynccontextmanager
async def log_stream(nc: Client, process: str, settings: Settings) -> AsyncIterator[LogStream | None]:
    """Publish this process's log records to ``AF_LOGS`` while the block runs
    (unless ``log_stream`` is off in the settings)."""
    if not settings.log_stream:
        yield None
        return
    handler = LogStream(process, settings.log_buffer)
    await handler.start(nc)
    handler.attach()
    try:
        yield handler
    finally:
        handler.detach()
        await handler.stop()

"""A sandboxed agent's own log lines, carried from its confined child to the worker.

In the child, :class:`LineCollector` takes the records the agent logs with
``logging`` (at the worker's ``AF_LOG_LEVEL`` and above, :func:`take_worker_level`)
into a bounded list:
no I/O, nothing sent while the agent runs, so logging never blocks it. The
lines travel with the result (the child's result pipe, then the template's
answer frame), and :func:`relog` logs them again in the worker, inside the
run's context: there they get the run's labels (run id, agent, tenant, trace)
and reach stderr and ``AF_LOGS`` like any line of the worker's.

Bounded, and lossy on purpose: the first :data:`MAX_LINES` records of an
invocation are kept, each message cut at :data:`MAX_MESSAGE` characters;
later ones are counted, and the count is logged as a line of its own. Lines of
an invocation that never answers (killed at its wall clock or memory limit, a
crash of the interpreter) are lost with it. What the child sends is the
agent's word: the worker re-checks the bounds and types and marks each line
``sandboxed`` (and its invocation id), whatever logger name it claims.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

__all__ = ["MAX_LINES", "MAX_MESSAGE", "LineCollector", "relog", "take_worker_level"]

MAX_LINES: Final = 200
MAX_MESSAGE: Final = 4000
_MAX_NAME: Final = 200

log = logging.getLogger(__name__)


def take_worker_level() -> None:
    """In the template, once, while it still has the worker's environment: the root
    logger's level is the worker's (``AF_LOG_LEVEL``, INFO), for every child it forks
    (set here, not in a child: ``setLevel`` clears every logger's cache, pages a child
    would copy)."""
    level = logging.getLevelName(os.environ.get("AF_LOG_LEVEL", "INFO").upper())
    logging.getLogger().setLevel(level if isinstance(level, int) else logging.INFO)


class LineCollector(logging.Handler):
    """The child's root handler: the agent's records as plain dicts, up to :data:`MAX_LINES`."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.dropped = 0

    @classmethod
    def install(cls) -> LineCollector:
        """In the child while warm (off the request's path): the root logger's only handler."""
        collector = cls()
        logging.getLogger().handlers[:] = [collector]
        return collector

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) >= MAX_LINES:
            self.dropped += 1
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        except Exception:
            self.handleError(record)
            return
        self.lines.append({
            "ts": record.created, "level": record.levelno, "logger": record.name[:_MAX_NAME],
            "msg": message[:MAX_MESSAGE],
        })  # fmt: skip

    def carried(self) -> dict[str, Any]:
        """What the result message carries: ``logs`` and, when some were, ``logs_dropped``."""
        if self.dropped:
            return {"logs": self.lines, "logs_dropped": self.dropped}
        return {"logs": self.lines}


def relog(lines: Any, dropped: Any, invocation: str, agent: str) -> None:
    """Log the lines a child sent (:meth:`LineCollector.carried`) in this process, in the
    current context (the run's: its labels are the run's), at their own level and time.
    Malformed entries are skipped; bounds are enforced again (the child is not trusted)."""
    if isinstance(lines, list):
        for line in lines[:MAX_LINES]:
            if isinstance(line, dict):
                _relog_one(line, invocation)
    if isinstance(dropped, int) and dropped > 0:
        log.warning("%s: invocation %s dropped %d log lines (over %d)", agent, invocation, dropped, MAX_LINES)


def _relog_one(line: dict[str, Any], invocation: str) -> None:
    name, level, message, created = line.get("logger"), line.get("level"), line.get("msg"), line.get("ts")
    if not isinstance(name, str) or not isinstance(level, int) or not isinstance(message, str):
        return
    logger = logging.getLogger(name[:_MAX_NAME] or "agent")
    level = min(max(level, logging.DEBUG), logging.CRITICAL)
    if not logger.isEnabledFor(level):
        return
    extra = {"sandboxed": True, "invocation": invocation}
    text = message[:MAX_MESSAGE]  # no args: a "%" in it stays as it is
    record = logger.makeRecord(logger.name, level, "(sandbox)", 0, text, (), None, extra=extra)
    if isinstance(created, int | float):
        record.created = float(created)
    logger.handle(record)

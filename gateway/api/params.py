"""Path parameters and query values, checked against the pattern of what they name
before any lookup: a value that cannot name anything is a 400 problem, never a key
or subject that NATS refuses (a 500)."""

from __future__ import annotations

import re
from typing import Final

from aiohttp import web

from mesh import names

__all__ = ["DLQ_SEQ", "MAX_SEQ", "RUN_ID", "path_value", "query_int", "query_value"]

RUN_ID: Final = names.RUN_ID_RE  # the envelope's id pattern
MAX_SEQ: Final = 2**63 - 1  # stream sequences are uint64; nats-server refuses 2**64 and up
DLQ_SEQ: Final = re.compile(r"[1-9][0-9]{0,18}")


def path_value(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str:
    value = request.match_info[name]
    if not pattern.fullmatch(value):
        raise web.HTTPBadRequest(text=f"{value[:200]!r} is not a {what}")
    return value


def query_value(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str | None:
    """``?name=``; absent or empty is None."""
    value = request.query.get(name) or None
    if value is not None and not pattern.fullmatch(value):
        raise web.HTTPBadRequest(text=f"{name}={value[:200]!r} is not a {what}")
    return value


def query_int(request: web.Request, name: str, default: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or int(raw) > high:
        raise web.HTTPBadRequest(text=f"{name} must be an integer from 0 to {high}")
    return int(raw)

"""Path parameters and query values, checked against the pattern of what they name
before any lookup: a value that cannot name anything is a 400 problem, never a key
or subject that NATS refuses (a 500)."""

from __future__ import annotations

import re
from typing import Any, Final

from aiohttp import web

from mesh import names
from mesh.schedules.definitions import NAME_PATTERN

__all__ = [
    "DLQ_SEQ", "LIMIT_ID", "MAX_SEQ", "PATH_SCHEMAS", "PG_TEXT", "RUN_ID", "ecma_pattern", "path_value",
    "query_int", "query_value",
]  # fmt: skip

RUN_ID: Final = names.RUN_ID_RE  # the envelope's id pattern
MAX_SEQ: Final = 2**63 - 1  # stream sequences are uint64; nats-server refuses 2**64 and up
DLQ_SEQ: Final = re.compile(r"[1-9][0-9]{0,18}")
LIMIT_ID: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # a budget's or quota's id
PG_TEXT: Final = r"^[^\x00]*$"  # what PostgreSQL text can store: any character but NUL


def ecma_pattern(pattern: str) -> str:
    """A pattern the way the handlers apply it (whole value), as JSON Schema spells it:
    JSON Schema's ``pattern`` searches, and knows ``$`` but not Python's ``\\Z``."""
    core = pattern.removeprefix("^").removesuffix("\\Z").removesuffix("$")
    return f"^(?:{core})$"


def _matching(pattern: re.Pattern[str] | str) -> dict[str, Any]:
    return {
        "type": "string",
        "pattern": ecma_pattern(pattern if isinstance(pattern, str) else pattern.pattern),
    }


#: The schema of each path parameter name the routes use (the OpenAPI document's):
#: one name, one meaning, across every route.
PATH_SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    "key": _matching(names.AGENT_KEY_RE),
    "agent": _matching(names.AGENT_KEY_RE),
    "run_id": _matching(RUN_ID),
    "seq": {"type": "integer", "minimum": 1, "maximum": MAX_SEQ},
    "id": _matching(LIMIT_ID),
    "name": _matching(NAME_PATTERN),
}


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

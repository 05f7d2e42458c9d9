"""Reading JSON request bodies and writing JSON responses, the same way everywhere.

A body is JSON the rest of the platform can store and send on (I-JSON, RFC 7493):
nested at most :data:`MAX_DEPTH` levels, because deeper values overflow the JSON and
pydantic serialisers further on (pydantic stops at 255 levels, ``json`` at the
interpreter's recursion limit); and with no lone UTF-16 surrogate (``"\\ud800"``),
which no UTF-8 encoder accepts. Either is a 400 here instead of a 500 there.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from aiohttp import web

__all__ = ["MAX_DEPTH", "json_response", "read_json"]

MAX_DEPTH: Final = 100
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")  # raw UTF-8 cannot carry one


def json_response(body: Any, status: int = 200) -> web.Response:
    """JSON with datetimes and other values rendered as strings."""
    return web.Response(status=status, text=json.dumps(body, default=str), content_type="application/json")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _too_deep(value: Any) -> bool:
    """Are objects and arrays nested more than :data:`MAX_DEPTH` levels in ``value``?
    Level by level, so a deep value cannot overflow the stack here."""
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _lone_surrogate(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    return False


def _parse(raw: bytes) -> Any:
    """The body's value; the checks past ``json.loads`` run only when the raw bytes
    could fail them, so a small ordinary body costs two byte counts and a search."""
    try:
        body = json.loads(raw or b"null", parse_constant=_not_json)
    except RecursionError:  # json recurses per level, and says so with this, not ValueError
        unfit = f"nested more than {MAX_DEPTH} levels"
    except ValueError as exc:
        unfit = str(exc)
    else:
        deep_enough = isinstance(body, dict | list) and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH
        if deep_enough and _too_deep(body):
            unfit = f"nested more than {MAX_DEPTH} levels"
        elif _SURROGATE_ESCAPE.search(raw) and _lone_surrogate(body):
            unfit = "a string holds a lone UTF-16 surrogate"
        else:
            return body
    raise web.HTTPBadRequest(text=f"body is not valid JSON: {unfit}")


async def read_json(request: web.Request) -> Any:
    """The parsed body: 415 unless JSON, 400 if unreadable, malformed or unfit (see the
    module docstring); its size is capped by the app."""
    if request.content_type not in ("application/json", ""):
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on bytes that do not inflate
        raise web.HTTPBadRequest(text=f"body could not be read: {exc.__cause__ or exc}") from exc
    return _parse(raw)

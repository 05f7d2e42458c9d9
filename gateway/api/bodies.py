"""Reading JSON request bodies and writing JSON responses, the same way everywhere."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

__all__ = ["json_response", "read_json"]


def json_response(body: Any, status: int = 200) -> web.Response:
    """JSON with datetimes and other values rendered as strings."""
    return web.Response(status=status, text=json.dumps(body, default=str), content_type="application/json")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


async def read_json(request: web.Request) -> Any:
    """The parsed body: 415 unless JSON, 400 if malformed (size is capped by the app)."""
    if request.content_type not in ("application/json", ""):
        raise web.HTTPUnsupportedMediaType(text="send application/json")
    try:
        return json.loads(await request.read() or b"null", parse_constant=_not_json)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"body is not valid JSON: {exc}") from exc

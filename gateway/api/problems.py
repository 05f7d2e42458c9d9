"""Every error leaves the API as ``application/problem+json`` (RFC 9457), mapped here once."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agents.errors import AgentError, AgentInputInvalid
from mesh.errors import MeshError

__all__ = ["problem", "problem_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status: int, title: str, detail: str = "", **extra: Any) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return web.Response(
        status=status,
        text=json.dumps(body, default=str),
        content_type="application/problem+json",
    )


def _title(class_name: str) -> str:
    """``RunNotFound`` -> ``Run not found``."""
    words = re.findall(r"[A-Z][a-z0-9]*", class_name) or [class_name]
    return " ".join([words[0], *(w.lower() for w in words[1:])])


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, exc.text or "")
    except ValidationError as exc:
        return problem(422, "Invalid request", str(exc.error_count()) + " validation error(s)",
                       errors=validation_errors(exc))  # fmt: skip
    except AgentInputInvalid as exc:
        return problem(exc.status, "Invalid agent input", str(exc), errors=exc.errors)
    except (AgentError, MeshError) as exc:
        return problem(exc.status, _title(type(exc).__name__), str(exc), error=type(exc).__name__)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "see the gateway log")

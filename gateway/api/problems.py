"""Every error leaves the API as ``application/problem+json`` (RFC 9457), mapped here once:
our handlers' by :func:`problem_middleware`, aiohttp's own (a request its parser
refuses never reaches the app) by the :class:`ApiRunner` that serves it."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final

from aiohttp import web
from aiohttp.web_request import BaseRequest
from pydantic import BaseModel, ConfigDict, ValidationError

from agents.errors import AgentError, AgentInputInvalid
from mesh.errors import BreakerOpen, MeshError

__all__ = ["ApiRunner", "Problem", "problem", "problem_middleware"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_BODY_HEADERS: Final = frozenset({"content-type", "content-length"})  # the problem's own


class Problem(BaseModel):
    """The body of every error answer; some carry more members that say what to act on
    (``errors`` of a 422, ``agent`` and ``open_until`` of an open breaker ...)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""


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
        response = problem(exc.status, exc.reason, exc.text or "")
        # What the exception says beside its text stays: a 405's Allow (RFC 9110 requires it) ...
        response.headers.extend((k, v) for k, v in exc.headers.items() if k.lower() not in _BODY_HEADERS)
        return response
    except ValidationError as exc:
        return problem(422, "Invalid request", str(exc.error_count()) + " validation error(s)",
                       errors=validation_errors(exc))  # fmt: skip
    except BreakerOpen as exc:  # the caller can act on when: say it, and in Retry-After
        until = exc.open_until.isoformat().replace("+00:00", "Z") if exc.open_until else None  # as pydantic
        response = problem(exc.status, "Breaker open", str(exc), error="BreakerOpen", agent=exc.agent,
                           open_until=until, breaker_reason=exc.reason)  # fmt: skip
        if exc.open_until is not None:
            retry = (exc.open_until - datetime.now(UTC)).total_seconds()
            response.headers["Retry-After"] = str(max(1, math.ceil(retry)))
        return response
    except AgentInputInvalid as exc:
        return problem(exc.status, "Invalid agent input", str(exc), errors=exc.errors)
    except (AgentError, MeshError) as exc:
        details = getattr(exc, "details", None) or {}  # what a caller needs to act (a budget's reset …)
        return problem(exc.status, _title(type(exc).__name__), str(exc), error=type(exc).__name__, **details)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "Internal Server Error", "see the gateway log")


# aiohttp answers a request its parser refuses (bad headers, a URL over 8 KiB, a
# Content-Encoding it cannot decode), and a handler timeout, itself, in text/plain:
# such a request has no app, so no middleware sees it. Its connection handler
# makes that answer in ``handle_error``; the three classes below put ours there.
# They are the one place that reaches into aiohttp's serving (``_make_server``,
# ``Server._loop`` and ``_kwargs``); tests/integration/gateway/test_api_bad_input.py
# fails, naming this module, when aiohttp changes them.


class _ProblemRequestHandler(web.RequestHandler):
    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:  # fmt: skip
        super().handle_error(request, status, exc, message)  # logs it; raises if a response is half sent
        try:
            title = HTTPStatus(status).phrase
        except ValueError:
            title = "Error"
        detail = message if status < 500 and message else "see the gateway log"
        resp = problem(status, title, detail)
        resp.force_close()  # the connection may be anywhere in a request: as aiohttp does
        return resp


class _ProblemServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` for the API: aiohttp's own error answers are problem+json too."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _ProblemServer(
            plain.request_handler, request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation, loop=plain._loop, **plain._kwargs,
        )  # fmt: skip

"""Request middleware around every route: a correlation id in and out, per-token rate
limits, and a structured access log (issue 24, part 1).

* **Correlation id.** ``X-Correlation-ID`` given by the caller (1-128 of
  ``A-Z a-z 0-9 . _ : / -``; anything else is a 400) or made here (32 hex digits)
  is on the response, in the access log line, and carried into every task the
  request enqueues (``metadata.correlation_id``, then the run's events and traces).
* **Rate limit.** A token bucket per bearer token (per client address without
  one): ``api_rate_per_s`` requests a second, bursts up to ``api_burst``. Past it,
  ``429`` problem+json with ``Retry-After`` (whole seconds until a request is allowed).
  Health, readiness and metrics are not limited. Buckets are per gateway process:
  with N gateway replicas a token gets up to N times the rate.
* **Trace.** With tracing on (``AF_TRACE_EXPORTER``, docs/observability.md) each
  request is a SERVER span, child of the caller's ``traceparent`` if it sent one,
  and the tasks it enqueues are its children.
* **Access log.** One JSON line per request on the ``gateway.access`` logger: time,
  method, path, status, latency in ms, response bytes, correlation id, client
  address and the token's fingerprint (the first 12 hex digits of its sha256; never
  the token). On stderr, and with the same fields into ``AF_LOGS`` when the
  process publishes its logs (:meth:`gateway.telemetry.LogStream.attach`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.api.auth import OPEN_PATHS
from gateway.api.problems import Handler, problem
from gateway.telemetry.logs import ACCESS_LOGGER
from mesh import trace

__all__ = [
    "CORRELATION_HEADER",
    "access_middleware",
    "correlation_id",
    "log_access_to_stderr",
    "rate_limit_middleware",
]

ACCESS_LOG: Final = logging.getLogger(ACCESS_LOGGER)
CORRELATION_HEADER: Final = "X-Correlation-ID"
_CORRELATION: Final = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
_KEY: Final = web.RequestKey("correlation_id", str)
_TOKEN: Final = web.RequestKey("token_fingerprint", str)
_MAX_BUCKETS: Final = 100_000  # idle buckets are dropped past this many


def log_access_to_stderr(enabled: bool) -> None:
    """What a served gateway does with its access log: JSON lines on stderr whatever the
    log level of the rest (``enabled``), or nothing."""
    ACCESS_LOG.propagate = False
    if enabled and not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        ACCESS_LOG.addHandler(handler)
    ACCESS_LOG.setLevel(logging.INFO if enabled else logging.WARNING)


def correlation_id(request: web.Request) -> str | None:
    """The request's correlation id (set by :func:`access_middleware`)."""
    return request.get(_KEY)


def _fingerprint(request: web.Request) -> str | None:
    """The first 12 hex digits of the Authorization header's sha256 (once per request:
    the rate limit and the access log both use it)."""
    if (known := request.get(_TOKEN)) is not None:
        return known or None
    auth = request.headers.get("Authorization")
    request[_TOKEN] = hashlib.sha256(auth.encode()).hexdigest()[:12] if auth else ""
    return request[_TOKEN] or None


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: the correlation id, then one access log line for whatever answered."""
    started = time.perf_counter()
    given = request.headers.get(CORRELATION_HEADER)
    if given is not None and not _CORRELATION.fullmatch(given):
        response: web.StreamResponse = problem(
            400, "Bad Request", f"{CORRELATION_HEADER}: 1 to 128 of A-Z a-z 0-9 . _ : / -, not {given[:40]!r}"
        )
        ident = uuid.uuid4().hex
    else:
        ident = given or uuid.uuid4().hex
        request[_KEY] = ident
        if not trace.recording():
            response = await handler(request)
        elif trace.sampled(request.headers.get(trace.TRACEPARENT)):
            response = await _traced(request, handler, ident)
        else:  # not sampled: no span, and the tasks it enqueues carry that decision
            entered = trace.enter_unsampled(request.headers)
            try:
                response = await handler(request)
            finally:
                trace.leave(entered)
    if not response.prepared:
        response.headers[CORRELATION_HEADER] = ident
    if ACCESS_LOG.isEnabledFor(logging.INFO):
        line = {
            "ts": datetime.now(UTC).isoformat(), "method": request.method, "path": request.path,
            "status": response.status, "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "bytes": response.body_length if response.prepared else getattr(response, "content_length", None),
            "correlation_id": ident, "remote": request.remote, "token": _fingerprint(request),
        }  # fmt: skip
        # The line on stderr; its fields, as fields, in AF_LOGS (gateway.telemetry.logs).
        ACCESS_LOG.info(json.dumps(line), extra=line)
    return response


async def _traced(request: web.Request, handler: Handler, ident: str) -> web.StreamResponse:
    """The API request's SERVER span (a caller's ``traceparent`` is its parent), current
    while the handler runs: the tasks it enqueues are its children."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else request.path
    attributes = {"http.request.method": request.method, "http.route": route, "url.path": request.path,
                  "af.correlation_id": ident}  # fmt: skip
    with trace.tracer().start_as_current_span(
        f"{request.method} {route}", trace.extract(request.headers), SpanKind.SERVER, attributes,
        record_exception=True, set_status_on_exception=True,
    ) as span:  # fmt: skip
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status}"))
        return response


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # monotonic time of the last refill


def rate_limit_middleware(rate_per_s: float, burst: int) -> Middleware:
    """``rate_per_s`` <= 0: no limit."""
    buckets: dict[str, _Bucket] = {}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if rate_per_s <= 0 or request.path in OPEN_PATHS:
            return await handler(request)
        key = _fingerprint(request) or f"addr:{request.remote}"
        now = time.monotonic()
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= _MAX_BUCKETS:  # forget the full (idle) ones: they are as new
                for idle in [k for k, b in buckets.items() if b.tokens + (now - b.at) * rate_per_s >= burst]:
                    del buckets[idle]
            bucket = buckets[key] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at) * rate_per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / rate_per_s
            response = problem(429, "Too Many Requests",
                               f"over {rate_per_s:g} requests/s (bursts of {burst}) for this token; "
                               f"try again in {wait:.2f} s", error="RateLimited")  # fmt: skip
            response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return response
        bucket.tokens -= 1.0
        return await handler(request)

    return limit

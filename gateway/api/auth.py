"""Who a request acts as, and what it may do: bearer tokens with a scope and a tenant.

On by default; health, metrics and the API's own description stay open for probes
and clients. A token (:mod:`agents.store.tokens`) is looked up by its hash in
PostgreSQL and remembered for :data:`CACHE_S`, so a revocation reaches every
gateway within that time (the gateway that revokes forgets it at once).

What a token may do:

* its scope: ``reader`` reads (GET, HEAD); ``operator`` also writes; routes marked
  :func:`admin_only` (tokens, tenants) need ``admin``;
* its tenant: a token bound to a tenant reaches only the routes marked
  :func:`tenant_scoped`, and those show and touch that tenant's rows only (in
  PostgreSQL by row security, :mod:`agents.store.tenancy`; in NATS by the
  handler). Every other route (the queue's DLQ, breakers, lifecycle, quotas…)
  acts on the whole fleet and needs a token of every tenant.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Middleware

from agents.store.tokens import Principal, Scope, authenticate, hash_token
from gateway.api.problems import Handler, problem

__all__ = [
    "CACHE_S",
    "OPEN_PATHS",
    "PRINCIPAL",
    "TokenCache",
    "admin_only",
    "auth_middleware",
    "principal",
    "tenant_scoped",
]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/api/v1/docs"})
CACHE_S: Final = 5.0
PRINCIPAL = web.RequestKey("principal", Principal)
DEV_PRINCIPAL: Final = Principal("dev", Scope.ADMIN, None)  # auth off (the embedded dev mode)
_READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_TENANT_SCOPED: Final = "__af_tenant_scoped__"
_ADMIN_ONLY: Final = "__af_admin_only__"

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def tenant_scoped(handler: H) -> H:
    """Mark a route that a tenant's token may use: it shows or touches only
    :func:`principal`'s tenant's data."""
    setattr(handler, _TENANT_SCOPED, True)
    return handler


def admin_only(handler: H) -> H:
    """Mark a route that needs an ``admin`` token, whatever its method."""
    setattr(handler, _ADMIN_ONLY, True)
    return handler


def principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


class TokenCache:
    """Tokens looked up recently (by their hash: no secret is kept), with what they
    were (None: not a live token)."""

    MAX: Final = 10_000

    def __init__(self, pool: asyncpg.Pool, ttl_s: float = CACHE_S) -> None:
        self.pool, self.ttl_s = pool, ttl_s
        self._seen: dict[bytes, tuple[Principal | None, float]] = {}

    async def lookup(self, secret: str) -> Principal | None:
        """The token ``secret`` is; 503 when PostgreSQL cannot say (never a 500)."""
        now = time.monotonic()
        key = hash_token(secret)
        hit = self._seen.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            found = await authenticate(self.pool, secret)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise web.HTTPServiceUnavailable(
                text=f"the token cannot be checked now: PostgreSQL did not answer ({type(exc).__name__})"
            ) from exc
        if len(self._seen) >= self.MAX:  # many unknown tokens: start over, never grow without bound
            self._seen.clear()
        self._seen[key] = (found, now + self.ttl_s)
        return found

    def forget(self, token_id: str | None = None) -> None:
        """Look ``token_id`` (None: every token) up again next time: it was revoked here."""
        if token_id is None:
            self._seen.clear()
        else:
            self._seen = {s: v for s, v in self._seen.items() if v[0] is None or v[0].token_id != token_id}


TOKENS = web.AppKey("tokens", TokenCache)


def _unauthorized(detail: str) -> web.Response:
    response = problem(401, "Unauthorized", detail)
    response.headers["WWW-Authenticate"] = 'Bearer realm="agent-factory"'
    return response


def _refusal(request: web.Request, who: Principal) -> web.Response | None:
    """403 when ``who`` may not use the route ``request`` matched."""
    handler = request.match_info.handler
    if getattr(handler, _ADMIN_ONLY, False):
        needed = Scope.ADMIN
    else:
        needed = Scope.READER if request.method in _READS else Scope.OPERATOR
    if not who.scope.allows(needed):
        return problem(403, "Forbidden", f"a {who.scope} token cannot {request.method} {request.path}"
                       f" (it needs {needed})")  # fmt: skip
    if who.tenant is not None and not getattr(handler, _TENANT_SCOPED, False):
        return problem(403, "Forbidden", f"a token of tenant {who.tenant!r} cannot use {request.path}:"
                       " it acts on every tenant")  # fmt: skip
    return None


def auth_middleware(enabled: bool) -> Middleware:
    """``enabled=False``: every request acts as an admin of every tenant (dev mode)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        if not enabled:
            request[PRINCIPAL] = DEV_PRINCIPAL
            return await handler(request)
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secret:
            return _unauthorized("missing bearer token")
        who = await request.app[TOKENS].lookup(secret.strip())
        if who is None:
            return _unauthorized("unknown or revoked token")
        if request.match_info.http_exception is None and (refused := _refusal(request, who)):
            return refused
        request[PRINCIPAL] = who
        return await handler(request)

    return check

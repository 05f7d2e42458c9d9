"""Connect to NATS with reconnect handling and a clear error when it cannot.

One connection per process is the norm: nats-py multiplexes publishes,
subscriptions and JetStream API calls over it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import ServiceUnavailableError
from prometheus_client import Counter, Gauge

from mesh.errors import ConnectionFailed
from mesh.wire import protocol

__all__ = [
    "MIN_SERVER_VERSION", "check_server_version", "connect", "consumers_of", "credentials", "jetstream",
    "redacted", "through_outage",
]  # fmt: skip

log = logging.getLogger(__name__)

T = TypeVar("T")

_clients: weakref.WeakSet[Client] = weakref.WeakSet()  # every connection this process opened
CONNECTED: Final = Gauge(
    "af_nats_connected", "1 while every NATS connection of this process is up (or closed on purpose), else 0"
)
CONNECTED.set_function(lambda: float(all(c.is_connected or c.is_closed for c in _clients)))
RECONNECTS: Final = Counter("af_nats_reconnects_total", "NATS connections of this process re-established")

_CONSUMER_PAGE: Final = 256  # the server lists this many consumers per request

# Per-message TTL 2.11, atomic batch publish 2.12, message schedules 2.14.
MIN_SERVER_VERSION: Final = (2, 14, 0)


def check_server_version(version: str, url: str = "") -> None:
    """Refuse a nats-server too old for the features the platform stands on,
    at connect time and by name, instead of failing later on a first batch
    or schedule with a cryptic API error."""
    try:
        found = tuple(int(part) for part in version.lstrip("v").split("-")[0].split(".")[:3])
    except ValueError:
        return  # an unparsable (development) version: let it try
    if found < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise ConnectionFailed(
            f"nats-server {version}{f' at {url}' if url else ''} is too old: Agent Factory needs {need} "
            "or newer (atomic batch publish since 2.12, message schedules since 2.14)"
        )


def _userinfo(url: str) -> tuple[str, str, str] | None:
    """``(scheme, userinfo, host)`` of one URL that has a user info part, else None."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    return (scheme, userinfo, host) if sep and at else None


def redacted(url: str) -> str:
    """A NATS URL (or a comma-separated list of them) fit to print or log: a
    password (or a token: ``nats://TOKEN@host``) masked."""
    if "," in url:
        return ",".join(redacted(part) for part in url.split(","))
    parts = _userinfo(url)
    if parts is None:
        return url
    scheme, userinfo, host = parts
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else f"{scheme}://***@{host}"


def credentials(url: str) -> dict[str, str]:
    """The ``user``/``password`` (or ``token``) in the first URL of ``url`` that
    has any, as nats-py connect options: nats-py presents a URL's own userinfo
    only to that server, not to the cluster nodes it discovers and reconnects
    to, but it presents these options to every server."""
    for part in url.split(","):
        parts = _userinfo(part.strip())
        if parts is not None and parts[1]:
            user, colon, password = parts[1].partition(":")
            return {"user": user, "password": password} if colon else {"token": user}
    return {}


async def connect(url: str, name: str = "agent-factory", initial_attempts: int = 3, **options: Any) -> Client:
    """Open a connection that reconnects forever once established.

    ``url`` is one NATS URL or a comma-separated list (the nodes of a
    cluster); the credentials in it go to every node, discovered ones too.
    The first connect fails fast with :class:`ConnectionFailed` (a user who
    points at the wrong URL should hear so in seconds, not minutes); after
    that, reconnects are unbounded so a nats-server restart is survived.
    """

    async def on_error(exc: Exception) -> None:
        log.warning("nats connection error: %s", exc)

    client: list[Client] = []  # the connection, once made (its callbacks read its status)

    async def on_disconnect() -> None:
        # nats-py calls this on a deliberate close (or drain) too.
        if client and (client[0].is_closed or client[0].is_draining):
            log.info("nats connection closed")
        else:
            log.info("nats disconnected; reconnecting")

    async def on_reconnect() -> None:
        RECONNECTS.inc()
        log.info("nats reconnected")

    defaults: dict[str, Any] = {
        "name": name,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        # Keep buffering publishes while reconnecting; callers await PubAcks anyway.
        "pending_size": 64 * 1024 * 1024,
    }
    if not {"user", "password", "token", "user_credentials", "nkeys_seed"} & options.keys():
        defaults.update(credentials(url))
    defaults.update(options)
    servers = [part.strip() for part in url.split(",") if part.strip()]
    # nats-py retries the *first* connect forever when reconnects are
    # unbounded; bound it, then restore the caller's reconnect policy.
    later_attempts = defaults["max_reconnect_attempts"]
    defaults["max_reconnect_attempts"] = max(1, initial_attempts)
    try:
        nc = await nats.connect(servers, **defaults)
    except Exception as exc:  # nats-py raises several unrelated types here
        raise ConnectionFailed(f"cannot connect to NATS at {redacted(url)}: {exc}") from exc
    nc.options["max_reconnect_attempts"] = later_attempts
    client.append(nc)
    _clients.add(nc)
    try:
        v = nc.connected_server_version
        check_server_version(f"{v.major}.{v.minor}.{v.patch}", redacted(url))
    except ConnectionFailed:
        await nc.close()
        raise
    protocol.install(nc)  # before any subscription: the parser is swapped while idle
    return nc


async def jetstream(nc: Client, timeout: float = 5.0) -> JetStreamContext:
    """A JetStream context, after checking the server has JetStream enabled."""
    js = nc.jetstream(timeout=timeout)
    try:
        await js.account_info()
    except ServiceUnavailableError as exc:
        msg = "JetStream is not enabled on this NATS server (start it with -js)"
        raise ConnectionFailed(msg) from exc
    except Exception as exc:
        raise ConnectionFailed(f"JetStream is not available: {exc}") from exc
    return js


async def consumers_of(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """Every consumer of ``stream``. The server lists 256 per request and nats-py's
    ``consumers_info`` asks for one page: a fleet of 100 agents has 300 lanes."""
    found: dict[str, ConsumerInfo] = {}
    offset = 0
    while True:
        page = await js.consumers_info(stream, offset=offset)
        for info in page:
            found.setdefault(info.name, info)  # one created or deleted meanwhile shifts a page
        offset += len(page)
        if len(page) < _CONSUMER_PAGE:
            return list(found.values())


async def through_outage(call: Callable[[], Awaitable[T]], tries: int = 4, pause_s: float = 0.5) -> T:
    """``call()``, tried again after ``pause_s``, twice that, three times… if it raises: a cold-path
    write that must ride out a short NATS outage (a restart) rather than be lost."""
    for attempt in range(1, tries):
        try:
            return await call()
        except Exception:
            await asyncio.sleep(pause_s * attempt)
    return await call()

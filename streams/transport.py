"""The ``nats://`` Faust transport: ``faust.App(..., broker="nats://host:4222")``.

Registered through the ``faust.transports`` entry point named ``nats``. The
consumer and producer of one app share one NATS connection, opened lazily when
the first of them starts (the transport itself is built at import time).

Broker URL options (query string of the first URL)::

    nats://127.0.0.1:4222?session_timeout=6&heartbeat=1

``session_timeout``  seconds without a heartbeat before a member is declared
                     dead and its partitions move (default 6)
``heartbeat``        seconds between membership heartbeats (default 1)
``linger_ms``        how long the producer gathers records before one socket
                     write (default 5)
``ack_timeout``      seconds to wait for a publish ack before the record counts
                     as failed (default 10)

Several servers: ``broker="nats://a:4222;nats://b:4222"``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.metadata import version
from typing import ClassVar, cast

from faust.transport import base
from faust.types import AppT
from faust.types.enums import ProcessingGuarantee
from nats.aio.client import Client
from nats.js import JetStreamContext
from yarl import URL

from mesh.wire.connection import connect, jetstream
from streams.consumer import Consumer
from streams.errors import UnsupportedGuarantee
from streams.producer import Producer
from streams.topics import TopicRegistry

__all__ = ["Connection", "Transport", "TransportSettings"]


@dataclass(frozen=True)
class TransportSettings:
    """Connection and group settings read from the broker URL(s)."""

    servers: tuple[str, ...]
    session_timeout_s: float = 6.0
    heartbeat_s: float = 1.0
    linger_s: float = 0.005
    ack_timeout_s: float = 10.0

    @classmethod
    def from_urls(cls, urls: list[URL]) -> TransportSettings:
        query = urls[0].query
        return cls(
            servers=tuple(str(u.with_query(None).with_fragment(None)) for u in urls),
            session_timeout_s=float(query.get("session_timeout", 6.0)),
            heartbeat_s=float(query.get("heartbeat", 1.0)),
            linger_s=float(query.get("linger_ms", 5.0)) / 1000.0,
            ack_timeout_s=float(query.get("ack_timeout", 10.0)),
        )


@dataclass
class Connection:
    """What the consumer and producer share: the client, JetStream and the topic catalogue."""

    nc: Client
    js: JetStreamContext
    topics: TopicRegistry


class Transport(base.Transport):
    """Faust transport over NATS JetStream (one stream per topic partition)."""

    Consumer: ClassVar[type[Consumer]] = Consumer  # type: ignore[assignment,misc]
    Producer: ClassVar[type[Producer]] = Producer  # type: ignore[assignment,misc]

    default_port = 4222
    driver_version = f"nats-py={version('nats-py')}"

    def __init__(self, url: list[URL], app: AppT, loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(url, app, loop=loop)
        if cast(object, app.conf.processing_guarantee) == ProcessingGuarantee.EXACTLY_ONCE:
            raise UnsupportedGuarantee(
                "processing_guarantee='exactly_once' needs Kafka transactions; "
                "the nats:// transport is at-least-once"
            )
        self.settings = TransportSettings.from_urls(list(url))
        self._connection: Connection | None = None
        self._users = 0
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> Connection:
        """The shared connection, opened on first use.

        Raises :class:`mesh.errors.ConnectionFailed` quickly when NATS is
        unreachable or has JetStream disabled. Once open, it reconnects forever.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._connection is None:
                nc = await connect(",".join(self.settings.servers), name=f"faust-{self.app.conf.id}")
                try:
                    js = await jetstream(nc)
                except BaseException:
                    await nc.close()
                    raise
                replicas = self.app.conf.topic_replication_factor
                self._connection = Connection(nc=nc, js=js, topics=TopicRegistry(js, replicas))
            self._users += 1
            return self._connection

    async def open_dedicated(self, purpose: str) -> tuple[Client, JetStreamContext]:
        """A connection of its own, e.g. for group heartbeats, which must not queue
        behind megabytes of records on the shared connection."""
        nc = await connect(",".join(self.settings.servers), name=f"faust-{self.app.conf.id}-{purpose}")
        try:
            return nc, await jetstream(nc)
        except BaseException:
            await nc.close()
            raise

    async def release(self) -> None:
        """Drop one user; the last one closes the connection."""
        if self._lock is None:
            return
        async with self._lock:
            self._users = max(0, self._users - 1)
            if self._users == 0 and self._connection is not None:
                conn, self._connection = self._connection, None
                try:
                    await conn.nc.drain()
                except Exception:
                    await conn.nc.close()

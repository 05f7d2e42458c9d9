"""A continuous pull from a JetStream consumer: messages stream in, in order.

``fetch()`` costs a round trip per batch and, when a subscriber keeps up with
its producer, a batch is one message. Instead this keeps pull requests for up
to ``batch`` messages outstanding on one inbox and tops them up at half, so
the server streams while the handler works (the pattern of nats.go's
``Consume``). Messages reach ``on_msg`` one at a time, in delivery order.

If the connection drops, the server forgets the outstanding requests; a
watchdog re-issues them within a quarter second of the reconnect, or when
nothing (message, heartbeat or expiry) has arrived for ``expires_s`` + 1 s.

``stop()`` drains: the message in hand finishes; the ones already received
are still passed to ``on_msg``, which is expected to hand them back (nak)
when its owner is stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mesh import names
from mesh.wire.protocol import sync_with_server

__all__ = ["PullStream"]

log = logging.getLogger(__name__)

_HEARTBEAT = "100"
_CONSUMER_GONE = "409"  # deleted, leadership change, too many waiting pulls
_WATCH_INTERVAL_S = 0.25


class PullStream:
    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        on_msg: Callable[[Msg], Awaitable[None]],
        *,
        batch: int = 32,
        expires_s: float = 5.0,
        api_prefix: str = names.JS_API_PREFIX,
    ) -> None:
        self._nc = nc
        self._on_msg = on_msg
        self._batch = max(1, batch)
        self._expires_s = expires_s
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._outstanding = 0  # messages requested and not yet received or expired
        self._last_activity = 0.0
        self._busy = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_delivery, pending_msgs_limit=max(65_536, 4 * self._batch)
        )
        self._last_activity = time.monotonic()
        await self._top_up()
        self._watchdog = asyncio.create_task(self._watch(), name=f"af-pull-{self._next_subject}")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._sub is not None:
            sub, self._sub = self._sub, None  # no more pull requests from here on
            try:
                # Everything the server sent before now lands in our queue and is
                # drained through on_msg; only a message stored during these few
                # milliseconds can still go to the closing inbox, and that one
                # comes back after ack_wait.
                await sync_with_server(self._nc)
                await sub.drain()  # type: ignore[no-untyped-call]
            except Exception:  # closed connection: nothing left to drain
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _top_up(self) -> None:
        if self._sub is None or self._outstanding > self._batch // 2:
            return
        wanted = self._batch - self._outstanding
        request = {"batch": wanted, "expires": int(self._expires_s * 1e9),
                   "idle_heartbeat": int(self._expires_s / 2 * 1e9)}  # fmt: skip
        self._outstanding += wanted
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        except Exception as exc:  # reconnecting or closed: the watchdog asks again
            self._outstanding -= wanted
            log.debug("pull request on %s failed: %s", self._next_subject, exc)

    async def _on_delivery(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers
        status = headers.get("Status") if headers and not msg.data else None
        if status is None:
            self._outstanding -= 1
            await self._top_up()
            self._busy = True
            try:
                await self._on_msg(msg)
            finally:
                self._busy = False
                self._last_activity = time.monotonic()
            return
        if status == _HEARTBEAT:
            return
        # 408 (a request expired) and 404 report how much of it went unfilled.
        unfilled = headers.get("Nats-Pending-Messages") if headers else None
        if unfilled is not None:
            self._outstanding = max(0, self._outstanding - int(unfilled))
        else:
            self._outstanding = 0
        if status == _CONSUMER_GONE:
            reason = headers.get("Description", "") if headers else ""
            log.warning("pull on %s: %s %s", self._next_subject, status, reason)
        await self._top_up()

    async def _watch(self) -> None:
        """Re-issue pulls after a reconnect, or when the server has gone quiet too long."""
        quiet_limit = self._expires_s + 1.0  # heartbeats come every expires/2 while idle
        reconnects = self._nc.stats["reconnects"]
        while True:
            await asyncio.sleep(_WATCH_INTERVAL_S)
            lost = self._nc.stats["reconnects"] != reconnects
            reconnects = self._nc.stats["reconnects"]
            quiet = time.monotonic() - self._last_activity > quiet_limit
            if self._nc.is_connected and not self._busy and (lost or quiet):
                self._outstanding = 0  # the server forgot our requests
                self._last_activity = time.monotonic()
                await self._top_up()

"""A continuous pull from a JetStream consumer: messages stream in, in order.

``fetch()`` costs a round trip per batch and, when a subscriber keeps up with
its producer, a batch is one message. Instead this keeps pull requests for up
to ``batch`` messages outstanding on one :class:`~mesh.wire.puller.PullInbox`
and tops them up at half, so the server streams while the handler works (the
pattern of nats.go's ``Consume``). Messages reach ``on_msg`` one at a time, in
delivery order, from one task; a message counts as outstanding until
``on_msg`` gets it, so no more than ``batch`` wait on this side.

If the connection drops, the server forgets the outstanding requests; a
watchdog re-issues them within a quarter second of the reconnect, or when
nothing (message, heartbeat or expiry) has arrived for ``expires_s`` + 1 s.

``stop()`` drains: the message in hand finishes; the ones already received
are still passed to ``on_msg``, which is expected to hand them back (nak)
when its owner is stopping, but only once the inbox is closed, so the server
has no pull of ours left to send them back to.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import names
from mesh.wire import protocol
from mesh.wire.puller import PullInbox, PullStatus

__all__ = ["PullStream"]

log = logging.getLogger(__name__)

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
        self._pulls = PullInbox(nc, stream, consumer, self._on_data, self._on_status, api_prefix=api_prefix)
        # Deliveries and the statuses among them, in arrival order, for the delivery task.
        self._arrived: deque[Msg | PullStatus] = deque()
        self._wake = asyncio.Event()
        self._pulling = False  # pull requests go out
        self._closed = False  # nothing more arrives: the delivery task ends once _arrived is empty
        self._outstanding = 0  # messages requested and not yet handed to on_msg, or expired
        self._last_activity = 0.0
        self._busy = False
        self._delivery: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._pulls.start()
        self._pulling, self._closed = True, False
        self._last_activity = time.monotonic()
        name = f"af-pull-{self._pulls.subject}"
        self._delivery = asyncio.create_task(self._deliver(), name=name)
        await self._top_up()
        self._watchdog = asyncio.create_task(self._watch(), name=f"{name}-watch")

    async def stop(self) -> None:
        # No more pull requests from here on, before the first await: a message
        # handed back (nak) while stopping must not be re-delivered to a pull
        # of ours the server would then answer into the closing inbox.
        self._pulling = False
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self._delivery is None:
            return
        # Everything the server sent before now lands in _arrived and is
        # drained through on_msg; only a message stored during these few
        # milliseconds can still go to the closing inbox, and that one
        # comes back after ack_wait.
        with contextlib.suppress(Exception):  # closed connection: nothing more to wait for
            await protocol.sync_with_server(self._nc)
        await self._pulls.stop()
        self._closed = True
        self._wake.set()
        delivery, self._delivery = self._delivery, None
        if delivery is not asyncio.current_task():  # (stopped from inside on_msg: it ends by itself)
            await delivery

    def _on_data(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self._last_activity = time.monotonic()
        self._arrived.append(protocol.to_msg(self._nc, subject, reply, data, headers))
        self._wake.set()

    def _on_status(self, status: PullStatus) -> None:
        self._last_activity = time.monotonic()
        if not status.heartbeat:
            self._arrived.append(status)
            self._wake.set()

    async def _deliver(self) -> None:
        arrived = self._arrived
        while True:
            # While stopping, nothing more is handed out until the inbox is
            # closed: a nak before that could come straight back to a pull of
            # ours still open on the server, and then to a closed inbox.
            if not arrived or (not self._pulling and not self._closed):
                if self._closed and not arrived:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            item = arrived.popleft()
            if isinstance(item, PullStatus):
                self._expired(item)
                await self._top_up()
                continue
            self._outstanding -= 1
            await self._top_up()
            self._busy = True
            try:
                await self._on_msg(item)
            except Exception:
                log.exception("pull on %s: message callback failed", self._pulls.subject)
            finally:
                self._busy = False
                self._last_activity = time.monotonic()

    def _expired(self, status: PullStatus) -> None:
        # 408 (a request expired) and 404 report how much of it went unfilled.
        if status.pending is not None:
            self._outstanding = max(0, self._outstanding - status.pending)
        else:
            self._outstanding = 0
        if status.code == "409":
            log.warning("pull on %s: %s %s", self._pulls.subject, status.code, status.description)

    async def _top_up(self) -> None:
        if not self._pulling or self._outstanding > self._batch // 2:
            return
        wanted = self._batch - self._outstanding
        self._outstanding += wanted
        try:
            await self._pulls.request(wanted, expires_s=self._expires_s, heartbeat_s=self._expires_s / 2)
        except Exception as exc:  # reconnecting or closed: the watchdog asks again
            self._outstanding -= wanted
            log.debug("pull request on %s failed: %s", self._pulls.subject, exc)

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

"""Pull requests against one JetStream consumer, without nats-py's ``fetch``.

``fetch`` can leave an orphaned lingering pull on the server that captures
the next message for a client that stopped listening, and it has no cheap
"what is there right now" call. :class:`Puller` owns one inbox per consumer
and tags every pull request with its own reply subject, so:

* :meth:`Puller.take` is one round trip (``no_wait``): up to *n* messages
  that are ready now, or ``[]``;
* :meth:`Puller.wait` is a lingering pull with an expiry;
* :meth:`Puller.arrival` waits on requests already open (a lingering pull
  whose waiter gave up) instead of adding one;
* status replies (404 no messages, 408 expired) come back on the request's
  own reply subject and end exactly that request;
* a message that arrives for a request nobody awaits any more is never
  dropped: it waits in :attr:`ready` and is handed out by the next call
  (or nak'ed by :meth:`close`), so it cannot sit invisible until ack-wait.

The inbox is read directly off the connection (:mod:`mesh.wire.protocol`): no
per-message queue hop, and status replies never become ``Msg`` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import names
from mesh.wire import protocol

__all__ = ["Puller"]

_TERMINAL = {"404", "408", "409", "400"}


class _Request:
    __slots__ = ("deadline", "done", "got", "status", "wanted")

    def __init__(self, wanted: int, deadline: float) -> None:
        self.wanted = wanted
        self.got = 0
        self.status: str | None = None
        self.done = asyncio.Event()
        self.deadline = deadline  # loop time by which the server has answered, or forgot it


class Puller:
    """Pull messages from ``stream``/``consumer``; ``start()`` before use.

    ``api_prefix``: the JetStream API prefix of the account or domain
    (:func:`mesh.wire.protocol.api_prefix` of the caller's context).
    """

    def __init__(self, nc: Client, stream: str, consumer: str, api_prefix: str = names.JS_API_PREFIX) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.ready: deque[Msg] = deque()
        self._api = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._ids = itertools.count(1)
        self._open: dict[str, _Request] = {}
        self._direct = protocol.DirectInbox(nc, f"{self._inbox}.*", self._on_msg)
        self._changed = asyncio.Event()  # a message arrived or a request ended
        self.last_status: str | None = None

    async def start(self) -> None:
        await self._direct.start()

    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if data or not headers:
            # Data arrives under its original subject, not our token; the
            # server serves a consumer's pulls in order, so it belongs to the
            # oldest open request.
            self.ready.append(protocol.to_msg(self.nc, subject, reply, data, headers))
            self._changed.set()
            if self._open:
                oldest, first = next(iter(self._open.items()))
                first.got += 1
                if first.got >= first.wanted:
                    self._finish(oldest, first)
            return
        parsed = protocol.parse_headers(headers)
        status = parsed.get("Status")
        if status is None:  # an empty message with headers but no status: still data
            self.ready.append(protocol.to_msg(self.nc, subject, reply, data, headers))
            self._changed.set()
            return
        if status == "100":  # idle heartbeat
            return
        token = subject[len(self._inbox) + 1 :].decode()
        request = self._open.get(token)
        self.last_status = f"{status} {parsed.get('Description', '')}".strip()
        if request is not None and status in _TERMINAL:
            request.status = status
            self._finish(token, request)

    def _finish(self, token: str, request: _Request) -> None:
        self._open.pop(token, None)
        request.done.set()
        self._changed.set()

    def _pop(self, n: int) -> list[Msg]:
        out: list[Msg] = []
        while self.ready and len(out) < n:
            out.append(self.ready.popleft())
        return out

    async def _pull(self, n: int, body: Mapping[str, object], wait_s: float) -> list[Msg]:
        if self.ready:
            return self._pop(n)
        token = str(next(self._ids))
        request = _Request(n, asyncio.get_running_loop().time() + wait_s)
        self._open[token] = request
        await protocol.publish(self.nc, self._api, json.dumps(body).encode(), f"{self._inbox}.{token}")
        try:
            async with asyncio.timeout(wait_s):
                await request.done.wait()
        except TimeoutError:
            # No status yet (slow server or reconnect): whatever arrives later
            # still lands in `ready` and is handed out by the next call.
            self._open.pop(token, None)
        return self._pop(n)

    async def take(self, n: int, timeout: float = 2.0) -> list[Msg]:
        """Up to ``n`` messages available right now (one round trip)."""
        return await self._pull(n, {"batch": n, "no_wait": True}, timeout)

    async def wait(self, n: int, expires: float) -> list[Msg]:
        """Up to ``n`` messages, waiting at most ``expires`` seconds for the first."""
        body = {"batch": n, "expires": int(expires * 1e9)}
        return await self._pull(n, body, expires + 1.0)

    async def arrival(self, n: int) -> list[Msg]:
        """Up to ``n`` messages, once one has arrived or an open request has
        ended (then possibly none): waits on the pulls already out, adds none,
        and not past the last of their deadlines."""
        if not self.ready and self.outstanding:
            self._changed.clear()
            deadline = max(request.deadline for request in self._open.values())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
        return self._pop(n)

    @property
    def outstanding(self) -> int:
        """Pull requests the server may still answer. One past its deadline
        (the server forgot it in a reconnect, or never answered) is dropped."""
        if self._open:
            now = asyncio.get_running_loop().time()
            for token in [t for t, r in self._open.items() if r.deadline < now]:
                del self._open[token]
        return len(self._open)

    async def close(self, settle_s: float = 0.0) -> list[Msg]:
        """Stop listening. Returns messages delivered but never handed out,
        after waiting up to ``settle_s`` for open lingering pulls to end,
        so the caller can nak them instead of leaving them to ack-wait."""
        if settle_s > 0 and self._open:
            waits = [r.done.wait() for r in self._open.values()]
            try:
                async with asyncio.timeout(settle_s):
                    await asyncio.gather(*waits)
            except TimeoutError:
                pass
        await self._direct.stop()  # idempotent: a second close is a no-op
        leftover = list(self.ready)
        self.ready.clear()
        return leftover

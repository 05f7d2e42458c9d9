"""The JetStream pull client: pull requests against one consumer and what answers them.

:class:`PullInbox` is the one place that speaks the pull protocol. It builds
the ``<api>.CONSUMER.MSG.NEXT.<stream>.<consumer>`` subject, writes the
request bodies (``batch``, ``expires``, ``no_wait``, ``idle_heartbeat``),
gives every request its own reply subject ``<inbox>.<token>`` on one
:class:`~mesh.wire.protocol.DirectInbox`, and sorts what comes back:
deliveries go raw to ``on_data``; status replies are read once into a
:class:`PullStatus` naming the request they answer. Its users are policies
on top of it:

* :class:`Puller` (here): request/response, for the worker's dispatch and
  the consumer loop (:mod:`mesh.wire.consumer`);
* :class:`~mesh.wire.stream.PullStream`: a continuous pull topped up at half;
* ``streams.reader.PartitionReader``: credit-based pulls that re-create
  their consumer when a pull goes unanswered.

Why not nats-py's ``fetch``: it can leave an orphaned lingering pull on the
server that captures the next message for a client that stopped listening,
and it has no cheap "what is there right now" call. With :class:`Puller`:

* :meth:`Puller.take` is one round trip (``no_wait``): up to *n* messages
  that are ready now, or ``[]``;
* :meth:`Puller.wait` is a lingering pull with an expiry;
* :meth:`Puller.arrival` waits on requests already open (a lingering pull
  whose waiter gave up) instead of adding one;
* status replies (404 no messages, 408 expired) come back on the request's
  own reply subject and end exactly that request;
* a message that arrives for a request nobody awaits any more is never
  dropped: it waits in :attr:`Puller.ready` and is handed out by the next
  call (or nak'ed by :meth:`Puller.close`), so it cannot sit invisible until
  ack-wait.

Frames are read directly off the connection (:mod:`mesh.wire.protocol`): no
per-message queue hop, and status replies never become ``Msg`` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh import names
from mesh.wire import protocol

__all__ = ["PullInbox", "PullStatus", "Puller", "next_subject", "request_body"]

HEARTBEAT: Final = "100"
_ENDED: Final = frozenset({"404", "408"})  # no messages / expired: the request is over, nothing wrong
_BROKEN: Final = frozenset({"409", "400"})  # consumer deleted, leadership change, too many pulls, bad request


def next_subject(api_prefix: str, stream: str, consumer: str) -> str:
    """Where pull requests for ``stream``/``consumer`` go (``api_prefix``:
    :func:`mesh.wire.protocol.api_prefix` of the caller's context)."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def request_body(
    batch: int, *, expires_s: float | None = None, no_wait: bool = False, heartbeat_s: float | None = None
) -> bytes:
    """A pull request's JSON body, byte for byte what ``json.dumps`` makes of
    ``{"batch", "expires", "no_wait", "idle_heartbeat"}`` (durations in ns)."""
    body = b'{"batch": %d' % batch
    if expires_s is not None:
        body += b', "expires": %d' % int(expires_s * 1e9)
    if no_wait:
        body += b', "no_wait": true'
    if heartbeat_s is not None:
        body += b', "idle_heartbeat": %d' % int(heartbeat_s * 1e9)
    return body + b"}"


class PullStatus:
    """A status reply to one pull request (the one with reply token ``token``)."""

    __slots__ = ("broken", "code", "description", "ended", "heartbeat", "pending", "token")

    def __init__(self, token: str, code: str, description: str, pending: int | None) -> None:
        self.token = token
        self.code = code
        self.description = description
        #: ``Nats-Pending-Messages`` of a 404/408/409: how much of the request went unfilled.
        self.pending = pending
        #: An idle heartbeat: the request is alive, nothing else.
        self.heartbeat = code == HEARTBEAT
        #: 404 or 408: the request is over (no messages, or it expired).
        self.ended = code in _ENDED
        #: 409 or 400: the request is over because the consumer is gone, changed
        #: leader, has too many waiting pulls, or refused the request.
        self.broken = code in _BROKEN

    def __repr__(self) -> str:
        return f"PullStatus({self.token!r}, {self.code} {self.description!r}, pending={self.pending})"


def _status(token: str, headers: bytes) -> PullStatus | None:
    parsed = protocol.parse_headers(headers)
    code = parsed.get("Status")
    if code is None:
        return None
    pending = parsed.get("Nats-Pending-Messages")
    unfilled = int(pending) if pending is not None and pending.isdigit() else None
    return PullStatus(token, code, parsed.get("Description", ""), unfilled)


class PullInbox:
    """Pull requests against ``stream``/``consumer`` and their replies; ``start()``
    before use, ``stop()`` after.

    ``on_data(subject, reply, data, headers)`` gets each delivery raw, on the
    connection's reader; ``on_status`` every status reply, heartbeats
    included. Deliveries carry their original subject, not a token: the
    server serves one consumer's pulls in order, so a delivery belongs to the
    oldest request still open. Both callbacks must be quick and must not block.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        on_data: protocol.RawHandler,
        on_status: Callable[[PullStatus], None],
        *,
        api_prefix: str = names.JS_API_PREFIX,
    ) -> None:
        self.nc = nc
        self.subject = next_subject(api_prefix, stream, consumer)
        self._inbox = nc.new_inbox()
        self._ids = itertools.count(1)
        self._direct = protocol.DirectInbox(nc, f"{self._inbox}.*", _frames(self._inbox, on_data, on_status))

    async def start(self) -> None:
        await self._direct.start()

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        await self._direct.stop()

    def request(
        self,
        batch: int,
        *,
        expires_s: float | None = None,
        no_wait: bool = False,
        heartbeat_s: float | None = None,
        token: str = "",
    ) -> Coroutine[Any, Any, None]:
        """Ask for up to ``batch`` messages: returns the publish, to be awaited
        (no coroutine frame of its own on the worker's hot path).

        A caller that tracks its requests names them (``token``, unique per
        inbox) and registers each before sending it: its answer can come
        back while the request is still being flushed. Raises what
        :func:`mesh.wire.protocol.publish` raises (closed connection, a full
        reconnect buffer)."""
        body = request_body(batch, expires_s=expires_s, no_wait=no_wait, heartbeat_s=heartbeat_s)
        reply = f"{self._inbox}.{token or next(self._ids)}"
        return protocol.publish(self.nc, self.subject, body, reply)


def _frames(
    inbox: str, on_data: protocol.RawHandler, on_status: Callable[[PullStatus], None]
) -> protocol.RawHandler:
    """The inbox's frame handler; a closure, as it runs once per delivery."""
    token_at = len(inbox) + 1

    def frame(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if data or not headers:
            on_data(subject, reply, data, headers)
            return
        status = _status(subject[token_at:].decode(), headers)
        if status is None:  # an empty message with headers but no status: still data
            on_data(subject, reply, data, headers)
            return
        on_status(status)

    return frame


class _Request:
    __slots__ = ("deadline", "done", "got", "wanted")

    def __init__(self, wanted: int, deadline: float) -> None:
        self.wanted = wanted
        self.got = 0
        self.done = asyncio.Event()
        self.deadline = deadline  # loop time by which the server has answered, or forgot it


class Puller:
    """Request/response pulls from ``stream``/``consumer``; ``start()`` before use.

    ``api_prefix``: the JetStream API prefix of the account or domain
    (:func:`mesh.wire.protocol.api_prefix` of the caller's context).
    """

    def __init__(self, nc: Client, stream: str, consumer: str, api_prefix: str = names.JS_API_PREFIX) -> None:
        self.nc = nc
        self.stream = stream
        self.consumer = consumer
        self.ready: deque[Msg] = deque()
        self._pulls = PullInbox(nc, stream, consumer, self._on_data, self._on_status, api_prefix=api_prefix)
        self._ids = itertools.count(1)  # request tokens
        self._open: dict[str, _Request] = {}
        self._changed = asyncio.Event()  # a message arrived or a request ended

    async def start(self) -> None:
        await self._pulls.start()

    def _on_data(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.ready.append(protocol.to_msg(self.nc, subject, reply, data, headers))
        self._changed.set()
        if self._open:
            oldest, first = next(iter(self._open.items()))
            first.got += 1
            if first.got >= first.wanted:
                self._finish(oldest, first)

    def _on_status(self, status: PullStatus) -> None:
        if status.ended or status.broken:
            request = self._open.get(status.token)
            if request is not None:
                self._finish(status.token, request)

    def _finish(self, token: str, request: _Request) -> None:
        self._open.pop(token, None)
        request.done.set()
        self._changed.set()

    def _pop(self, n: int) -> list[Msg]:
        out: list[Msg] = []
        while self.ready and len(out) < n:
            out.append(self.ready.popleft())
        return out

    async def _pull(self, n: int, wait_s: float, expires_s: float | None = None) -> list[Msg]:
        if self.ready:
            return self._pop(n)
        token = str(next(self._ids))
        request = _Request(n, asyncio.get_running_loop().time() + wait_s)
        self._open[token] = request
        await self._pulls.request(n, expires_s=expires_s, no_wait=expires_s is None, token=token)
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
        return await self._pull(n, timeout)

    async def wait(self, n: int, expires: float) -> list[Msg]:
        """Up to ``n`` messages, waiting at most ``expires`` seconds for the first."""
        return await self._pull(n, expires + 1.0, expires)

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
        await self._pulls.stop()  # idempotent: a second close is a no-op
        leftover = list(self.ready)
        self.ready.clear()
        return leftover

"""Pipelined request/reply on one inbox: JetStream publishes and double acks.

``js.publish`` and ``msg.ack_sync`` each pay for an ``asyncio.wait_for``
timer and a future per call; nats-py's ``publish_async`` has no timeout at
all (a lost PubAck waits forever). :class:`Pipeline` sends any number of
requests without waiting, matches replies by token on one wildcard inbox
read directly off the connection (:mod:`mesh.wire.protocol`: no queue, no task hop,
no ``Msg`` per reply), and expires overdue requests from a single sweeper
task, so a lost reply surfaces as :class:`TimeoutError` and the caller
retries (a publish that may be retried under the same identity carries a
``Nats-Msg-Id``, so the retry stores one copy).

:meth:`Pipeline.send` is the one primitive: the reply settles a
:class:`Waiter`, which is an ``asyncio.Future`` for :meth:`Pipeline.request`,
and the record itself for the Faust producer (:mod:`streams.publisher`), so a
record pays for no second future. :func:`parse_puback` is the one PubAck parser.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import NamedTuple, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from mesh.errors import StreamUnavailable
from mesh.wire import protocol

__all__ = ["ELECTION_PATIENCE_S", "Patience", "Pipeline", "PubAck", "Reply", "Waiter", "parse_puback"]

# How long a write answered 503 is tried again. An R3 stream whose leader died
# elects another in 2-5 s on a quiet machine (tests/cluster/test_faults.py).
ELECTION_PATIENCE_S = 15.0

_ACK = b"+ACK"


# Named tuples, not frozen dataclasses: one of each per publish, and a frozen
# dataclass pays an ``object.__setattr__`` per field on construction. On the
# hot paths they are built with ``tuple.__new__``, skipping the Python-level
# ``__new__`` frame of a named tuple.
_new = tuple.__new__


class PubAck(NamedTuple):
    stream: str
    seq: int
    duplicate: bool = False


class Reply(NamedTuple):
    """A reply as it came off the wire (headers parsed on demand)."""

    data: bytes
    raw_headers: bytes | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        return protocol.parse_headers(self.raw_headers) if self.raw_headers else None


class Waiter(Protocol):
    """What a reply settles: an ``asyncio.Future[Reply]``, or any object with
    its two methods. Called on the connection's reader: be quick, never block.

    ``set_exception`` gets :class:`TimeoutError` once the pipeline's timeout
    has passed, and :class:`ConnectionError` when the pipeline stops. A waiter
    that raises :class:`asyncio.InvalidStateError` (a cancelled future) is
    dropped: one ``try`` costs nothing until it raises, a ``done()`` call per
    reply would.
    """

    def set_result(self, result: Reply, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class Pipeline:
    """Owned via ``start()``/``stop()``; one per connection is enough.

    ``timeout`` is fixed for the pipeline's life: deadlines then grow in send
    order, and the sweeper stops at the first one not yet due.
    """

    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._ids = itertools.count(1)
        self._pending: dict[bytes, tuple[Waiter, float]] = {}
        self._inbox = protocol.DirectInbox(nc, f"{self._prefix}.*", self._on_reply)
        self._sweeper: asyncio.Task[None] | None = None
        self._acks: dict[str, list[tuple[str, asyncio.Future[None]]]] = {}
        self._ack_flush: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._inbox.start()
        self._sweeper = asyncio.create_task(self._sweep(), name="pipeline-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        with contextlib.suppress(Exception):
            await self._inbox.stop()
        pending, self._pending = self._pending, {}
        for waiter, _ in pending.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                waiter.set_exception(ConnectionError("pipeline stopped"))
        for members in self._acks.values():
            _settle(members, ConnectionError("pipeline stopped"))
        self._acks.clear()

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        entry = self._pending.pop(subject[self._cut :], None)
        if entry is not None:
            try:  # noqa: SIM105 - a with-suppress would cost a context manager per reply
                entry[0].set_result(_new(Reply, (data, headers)))
            except asyncio.InvalidStateError:
                pass

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            overdue = []
            for token, (_, deadline) in self._pending.items():  # in send order
                if deadline >= now:
                    break
                overdue.append(token)
            for token in overdue:
                waiter, _ = self._pending.pop(token)
                with contextlib.suppress(asyncio.InvalidStateError):
                    waiter.set_exception(TimeoutError("no reply from NATS in time"))

    async def send(self, subject: str, data: bytes, headers: bytes | None, waiter: Waiter) -> None:
        """Send now; the reply, or its absence after ``timeout``, settles ``waiter``.

        ``headers`` are pre-encoded (:func:`mesh.wire.protocol.encode_headers`).
        If sending raises, ``waiter`` is forgotten unsettled.
        """
        token = b"%d" % next(self._ids)
        self._pending[token] = (waiter, time.monotonic() + self.timeout)
        try:
            await protocol.publish(self.nc, subject, data, f"{self._prefix}.{token.decode()}", headers)
        except BaseException:
            self._pending.pop(token, None)
            raise

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | bytes | None = None
    ) -> asyncio.Future[Reply]:
        """Send now; the returned future resolves with the reply.

        ``headers`` may be pre-encoded (:func:`mesh.wire.protocol.encode_headers`).
        """
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        raw = protocol.encode_headers(headers) if isinstance(headers, Mapping) else headers
        await self.send(subject, data, raw, fut)
        return fut

    async def publish(
        self, subject: str, data: bytes, headers: Mapping[str, str] | bytes | None = None
    ) -> PubAck:
        """JetStream publish; returns once the stream has stored it."""
        return parse_puback(await (await self.request(subject, data, headers)))

    async def ack_sync(self, msg: Msg) -> None:
        """Double ack: returns once the server confirmed it got the ack.

        Acks for the same consumer asked for in the same event-loop turn
        share one confirmation: all but the last go out as plain ``+ACK``,
        the last asks for the reply. One connection delivers them in order
        and the server takes a consumer's acks in order, so the reply to the
        last confirms receipt of every one before it; if it never comes,
        every ack of the group fails with :class:`TimeoutError`.
        """
        if not msg.reply:
            return
        parsed = protocol.ack_subject(msg.reply)
        if parsed is None:  # not a JetStream ack subject we can group: confirm it alone
            await (await self.request(msg.reply, _ACK))
        else:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if not self._acks:
                self._ack_flush = asyncio.create_task(self._flush_acks())
            self._acks.setdefault(parsed.consumer, []).append((msg.reply, fut))
            await fut
        msg._ackd = True

    async def _flush_acks(self) -> None:
        groups, self._acks = self._acks, {}
        for members in groups.values():
            try:
                for reply, _ in members[:-1]:
                    await protocol.publish(self.nc, reply, _ACK)
                await self.send(members[-1][0], _ACK, None, _Confirmation(members))
            except Exception as exc:
                _settle(members, exc)


class _Confirmation:
    """The :class:`Waiter` of a group of acks: its reply, or its absence, settles them all."""

    __slots__ = ("members",)

    def __init__(self, members: list[tuple[str, asyncio.Future[None]]]) -> None:
        self.members = members

    def set_result(self, result: Reply, /) -> None:
        _settle(self.members, None)

    def set_exception(self, exception: BaseException, /) -> None:
        _settle(self.members, exception)


def _settle(members: list[tuple[str, asyncio.Future[None]]], exc: BaseException | None) -> None:
    for _, fut in members:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


# The server's PubAck, exactly: {"stream":"S","seq":N} with an optional
# ,"duplicate":true (and ,"domain":"D"). Anything else takes the JSON path.
_PUBACK = re.compile(rb'\{"stream":"([^"\\]+)",(?:"domain":"[^"\\]*",)?"seq":(\d+)(,"duplicate":true)?\}')


def parse_puback(reply: Reply | Msg) -> PubAck:
    """The PubAck in ``reply``, or the error it carries as :class:`APIError`."""
    fast = _PUBACK.fullmatch(reply.data)
    if fast is not None:
        stream, seq, duplicate = fast.groups()
        return _new(PubAck, (stream.decode(), int(seq), duplicate is not None))
    if not reply.data:
        headers = reply.headers or {}
        status = headers.get("Status")
        if status == "503":
            raise NoStreamResponseError
        raise APIError(code=int(status or 0), description=headers.get("Description"))
    body = json.loads(reply.data)
    error = body.get("error")
    if error is not None:
        raise APIError(
            code=error.get("code"), err_code=error.get("err_code"),
            description=error.get("description"), stream=body.get("stream"),
        )  # fmt: skip
    return PubAck(body["stream"], body["seq"], bool(body.get("duplicate")))


class Patience:
    """Paces the retries of a JetStream write answered 503 (:func:`parse_puback`
    raises ``NoStreamResponseError``): no server of the stream took it, so
    nothing was stored and sending it again is safe, even without a
    ``Nats-Msg-Id``. That happens while a stream's leader is being elected
    (the node that led it died or was cut off). Made only on the first 503,
    so a write that succeeds pays nothing for it."""

    __slots__ = ("_delay", "_waited", "seconds")

    def __init__(self, seconds: float = ELECTION_PATIENCE_S) -> None:
        self.seconds = seconds
        self._delay = 0.05
        self._waited = 0.0

    async def pause(self, what: str) -> None:
        """Sleep before the next try (50 ms, doubling up to 1 s); raise
        :class:`~mesh.errors.StreamUnavailable` once ``seconds`` are spent."""
        if self._waited + self._delay > self.seconds:
            raise StreamUnavailable(what, self._waited)
        started = time.monotonic()
        await asyncio.sleep(self._delay)  # a back-off, not a wait for an event
        self._waited += time.monotonic() - started
        self._delay = min(self._delay * 2, 1.0)

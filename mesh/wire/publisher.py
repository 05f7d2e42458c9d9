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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Mapping
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from mesh.wire import protocol

__all__ = ["Pipeline", "PubAck", "Reply", "parse_puback"]

_ACK = b"+ACK"


# Named tuples, not frozen dataclasses: one of each per publish, and a frozen
# dataclass pays an ``object.__setattr__`` per field on construction.
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


class Pipeline:
    """Owned via ``start()``/``stop()``; one per connection is enough."""

    def __init__(self, nc: Client, timeout: float = 5.0) -> None:
        self.nc = nc
        self.timeout = timeout
        self._prefix = nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._ids = itertools.count(1)
        self._pending: dict[bytes, tuple[asyncio.Future[Reply], float]] = {}
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
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("pipeline stopped"))
        self._pending.clear()
        for members in self._acks.values():
            _settle(members, ConnectionError("pipeline stopped"))
        self._acks.clear()

    def _on_reply(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        entry = self._pending.pop(subject[self._cut :], None)
        if entry is not None and not entry[0].done():
            entry[0].set_result(Reply(data, headers))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            overdue = [t for t, (_, deadline) in self._pending.items() if deadline < now]
            for token in overdue:
                fut, _ = self._pending.pop(token)
                if not fut.done():
                    fut.set_exception(TimeoutError("no reply from NATS in time"))

    async def request(
        self, subject: str, data: bytes, headers: Mapping[str, str] | bytes | None = None
    ) -> asyncio.Future[Reply]:
        """Send now; the returned future resolves with the reply.

        ``headers`` may be pre-encoded (:func:`mesh.wire.protocol.encode_headers`).
        """
        token = b"%d" % next(self._ids)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[token] = (fut, time.monotonic() + self.timeout)
        raw = protocol.encode_headers(headers) if isinstance(headers, Mapping) else headers
        try:
            await protocol.publish(self.nc, subject, data, f"{self._prefix}.{token.decode()}", raw)
        except BaseException:
            self._pending.pop(token, None)
            raise
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
                confirmed = await self.request(members[-1][0], _ACK)
            except Exception as exc:
                _settle(members, exc)
                continue
            confirmed.add_done_callback(lambda f, m=members: _settle(m, _failure(f)))  # type: ignore[misc]


def _failure(fut: asyncio.Future[Reply]) -> BaseException | None:
    return ConnectionError("ack confirmation cancelled") if fut.cancelled() else fut.exception()


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
        return PubAck(fast[1].decode(), int(fast[2]), fast[3] is not None)
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

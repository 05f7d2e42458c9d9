"""A lean hot path on a nats-py connection: direct inboxes and pre-built publishes.

For every message, nats-py parses headers into a dict, builds a ``Msg``,
puts it on the subscription's ``asyncio.Queue`` and wakes the
subscription's task to run its callback; every publish validates the
subject, encodes headers through a regular expression per key and builds
the command in several steps. On the task queue's hot path (publish
replies, double-ack replies, pulled tasks) that is most of the client's
CPU. This module hooks nats-py at two narrow points instead:

* **receive** — :class:`DirectInbox` registers a plain function for one
  subscription id. ``Client._process_msg`` is wrapped once per connection;
  a message for a registered sid goes straight to the function, from the
  connection's reader, with the raw subject, reply, payload and header
  bytes. Every other subscription is untouched. The subscription itself
  is an ordinary nats-py one, so reconnects re-subscribe it as usual.
  The connection's protocol parser is replaced by :class:`LeanParser`,
  which reads ``MSG``/``HMSG`` frames by offset (nats-py matches a regular
  expression and shifts the whole buffer once per message) and calls a
  direct handler without a coroutine; any other frame is left to nats-py.
* **send** — :func:`publish` builds the ``PUB``/``HPUB`` command with one
  bytes format and appends it to nats-py's pending buffer, the same place
  ``Client.publish`` ends up, with the same closed/draining/buffer checks.

nats-py is pinned (``nats-py==2.16.0``); ``tests/unit/mesh/wire/test_nats_py_pins.py``
fails loudly if the internals used here move.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import (
    BadSubscriptionError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
    ProtocolError,
)
from nats.js import JetStreamContext
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, Parser

__all__ = [
    "EMPTY_HEADERS",
    "EXPECTED_LAST_SUBJECT_SEQ",
    "AckSubject",
    "DirectInbox",
    "LeanParser",
    "RawHandler",
    "ack_position",
    "ack_subject",
    "delivery_of",
    "encode_headers",
    "expect_last_subject_seq",
    "install",
    "parse_headers",
    "publish",
    "to_msg",
    "with_header",
]

log = logging.getLogger(__name__)

#: ``handler(subject, reply, data, headers)``; all raw bytes, ``headers`` None when absent.
RawHandler = Callable[[bytes, bytes, bytes, bytes | None], None]

_HOOK_ATTR = "_af_direct_handlers"
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def install(nc: Client) -> dict[int, RawHandler]:
    """Hook ``nc`` (once; :func:`mesh.wire.connection.connect` does it right after
    connecting) and return its sid → handler table."""
    table: dict[int, RawHandler] | None = getattr(nc, _HOOK_ATTR, None)
    if table is not None:
        return table
    table = {}
    original = nc._process_msg

    async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        handler = table.get(sid)
        if handler is None:
            await original(sid, subject, reply, data, headers)  # type: ignore[arg-type]  # nats-py passes None too
            return
        try:
            handler(subject, reply, data, headers)
        except Exception:  # a bug in one handler must not break the connection's reader
            log.exception("direct inbox handler failed for %r", subject)

    nc._process_msg = process_msg  # type: ignore[method-assign]
    lean_parser = LeanParser(nc, table)
    lean_parser.buf, lean_parser.state = nc._ps.buf, nc._ps.state  # normally empty: not yet reading
    lean_parser.msg_arg, lean_parser.needed = nc._ps.msg_arg, nc._ps.needed
    lean_parser.header_needed = nc._ps.header_needed
    nc._ps = lean_parser
    setattr(nc, _HOOK_ATTR, table)
    return table


class LeanParser(Parser):
    """nats-py's parser with a fast path for message frames (see the module docstring)."""

    def __init__(self, nc: Client, direct: dict[int, RawHandler]) -> None:
        super().__init__(nc)
        self._direct = direct

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        size = len(buf)
        pos = 0
        direct = self._direct
        arg = self.msg_arg
        while True:
            if self.state == AWAITING_MSG_PAYLOAD:
                needed = self.needed
                if size - pos < needed + 2:
                    break
                hsize = self.header_needed
                headers = bytes(buf[pos : pos + hsize]) if hsize else None
                payload = bytes(buf[pos + hsize : pos + needed])
                pos += needed + 2
                self.header_needed = 0
                self.state = AWAITING_CONTROL_LINE
                sid = arg["sid"]
                handler = direct.get(sid)
                if handler is None:
                    await self.nc._process_msg(sid, arg["subject"], arg["reply"], payload, headers)
                    continue
                try:
                    handler(arg["subject"], arg["reply"], payload, headers)
                except Exception:
                    log.exception("direct inbox handler failed for %r", arg["subject"])
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            if buf.startswith(b"MSG ", pos):
                parts = bytes(buf[pos + 4 : end]).split()
                if len(parts) not in (3, 4):
                    raise ProtocolError("nats: malformed MSG")
                has_reply = len(parts) == 4
                self.header_needed = 0
            elif buf.startswith(b"HMSG ", pos):
                parts = bytes(buf[pos + 5 : end]).split()
                if len(parts) not in (4, 5):
                    raise ProtocolError("nats: malformed HMSG")
                has_reply = len(parts) == 5
                self.header_needed = int(parts[-2])
            else:  # PING, PONG, INFO, +OK, -ERR: nats-py's own parser takes it from here
                del buf[:pos]
                await super().parse()
                return
            arg["subject"] = parts[0]
            arg["sid"] = int(parts[1])
            arg["reply"] = parts[2] if has_reply else b""
            self.needed = int(parts[-1])
            self.state = AWAITING_MSG_PAYLOAD
            pos = end + 2
        if pos:
            del buf[:pos]


async def _unused(msg: Msg) -> None:  # pragma: no cover - never called: the hook takes the sid
    raise AssertionError("direct inbox message reached nats-py's queue")


class DirectInbox:
    """A subscription whose messages go to ``handler`` without a queue or task hop.

    The handler runs on the connection's reader: it must be quick and must
    not block (set a future, append to a deque).
    """

    def __init__(self, nc: Client, subject: str, handler: RawHandler, *, queue: str = "") -> None:
        self.nc = nc
        self.subject = subject
        self.queue = queue
        self.handler = handler
        self._sub: Subscription | None = None

    async def start(self) -> None:
        table = install(self.nc)
        self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=_unused)
        table[self._sub._id] = self.handler  # before the next await: nothing has arrived yet

    async def stop(self) -> None:
        if self._sub is None:
            return
        sub, self._sub = self._sub, None
        install(self.nc).pop(sub._id, None)
        with contextlib.suppress(ConnectionClosedError, BadSubscriptionError):
            await sub.unsubscribe()


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """``NATS/1.0`` header block; CR/LF in values become spaces (as in nats-py)."""
    parts = [b"NATS/1.0\r\n"]
    for key, value in headers.items():
        if "\r" in value or "\n" in value:
            value = value.translate(_NEWLINES)
        parts.append(f"{key}: {value}\r\n".encode())
    parts.append(b"\r\n")
    return b"".join(parts)


EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
EMPTY_HEADERS: Final = b"NATS/1.0\r\n\r\n"
_EXPECT: Final = EXPECTED_LAST_SUBJECT_SEQ.encode()


def expect_last_subject_seq(headers: bytes, seq: int) -> bytes:
    """``headers`` (a pre-encoded block) plus :data:`EXPECTED_LAST_SUBJECT_SEQ`:
    compare-and-set on the subject (0: create-only), for run records and events."""
    return b"%s%s: %d\r\n\r\n" % (headers[:-2], _EXPECT, seq)


def with_header(headers: bytes, name: str, value: str) -> bytes:
    """``headers`` (a pre-encoded block) plus ``name: value`` (no CR/LF in either)."""
    return b"%s%s: %s\r\n\r\n" % (headers[:-2], name.encode(), value.encode())


def parse_headers(raw: bytes) -> dict[str, str]:
    """The inverse of :func:`encode_headers`, plus the inline status line
    (``NATS/1.0 404 No Messages``) as ``Status`` and ``Description``, like nats-py."""
    first, _, rest = raw.partition(b"\r\n")
    out: dict[str, str] = {}
    if len(first) > 9:
        status, _, description = first[9:].strip().partition(b" ")
        if status.isdigit():
            out["Status"] = status.decode()
        if description:
            out["Description"] = description.decode(errors="replace")
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep and name:
            out[name.strip().decode(errors="replace")] = value.strip().decode(errors="replace")
    return out


def to_msg(nc: Client, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> Msg:
    """A regular nats-py ``Msg`` (ack, nak, metadata all work) from raw parts."""
    return Msg(
        _client=nc,
        subject=subject.decode(),
        reply=reply.decode(),
        data=data,
        headers=parse_headers(headers) if headers else None,
    )


class AckSubject(NamedTuple):
    """What a JetStream delivery's ack subject says about it."""

    consumer: str  # ``$JS.ACK[.<domain>.<account>].<stream>.<consumer>``: one consumer's acks
    attempt: int
    stream_seq: int


# The one place that knows the ack subject's layout; ack_subject and ack_position
# are its two views (text for the queue, raw bytes for the streams reader).
#   $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
#   $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>...<pending>[.<token>]
_DELIVERED_V1, _DELIVERED_V2 = 4, 6  # index of <delivered> in each layout


def _delivered_at(n: int) -> int:
    """Index of ``<delivered>`` in an ack subject of ``n`` tokens; 0 if none is that long."""
    return _DELIVERED_V1 if n == 9 else _DELIVERED_V2 if n in (11, 12) else 0


def ack_subject(reply: str) -> AckSubject | None:
    """Parse ``reply`` as a JetStream ack subject (both layouts), or None."""
    tokens = reply.split(".")
    head = _delivered_at(len(tokens))
    if not head or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        return AckSubject(".".join(tokens[:head]), int(tokens[head]) or 1, int(tokens[head + 1]))
    except ValueError:
        return None


def ack_position(reply: bytes) -> tuple[int, int, int] | None:
    """``(stream seq, timestamp ns, pending)`` of a raw ack subject, or None."""
    tokens = reply.split(b".")
    head = _delivered_at(len(tokens))
    if not head or tokens[0] != b"$JS" or tokens[1] != b"ACK":
        return None
    try:
        return int(tokens[head + 1]), int(tokens[head + 3]), int(tokens[head + 4])
    except ValueError:
        return None


def delivery_of(msg: Msg) -> tuple[int, int]:
    """``(attempt, stream sequence)`` of a JetStream delivery, read from its ack subject.

    The same numbers as nats-py's ``msg.metadata`` (``num_delivered``,
    ``sequence.stream``) for both ack subject layouts, without building its two
    dataclasses and a datetime per message; anything unexpected goes to nats-py.
    """
    parsed = ack_subject(msg.reply) if msg.reply else None
    if parsed is not None:
        return parsed.attempt, parsed.stream_seq
    meta = msg.metadata
    return meta.num_delivered or 1, meta.sequence.stream if meta.sequence else 0


async def publish(
    nc: Client, subject: str, data: bytes, reply: str = "", headers: bytes | None = None
) -> None:
    """Publish with pre-encoded ``headers`` (see :func:`encode_headers`).

    Same checks as ``Client.publish``: closed and draining connections
    raise, and while reconnecting the command is buffered up to nats-py's
    pending limit, past which it raises ``OutboundBufferLimitError``.
    """
    if nc.is_closed:
        raise ConnectionClosedError
    if nc.is_draining_pubs:
        raise ConnectionDrainingError
    size = len(data)
    if size > nc._max_payload:
        raise MaxPayloadError
    if headers is None:
        cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), size, data)
    else:
        hsize = len(headers)
        cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
            subject.encode(), reply.encode(), hsize, hsize + size, headers, data,
        )  # fmt: skip
    pending = len(cmd) + nc._pending_data_size
    if not nc.is_connected and (nc._max_pending_size <= 0 or pending > nc._max_pending_size):
        raise OutboundBufferLimitError
    nc._pending.append(cmd)
    nc._pending_data_size = pending
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += size
    if nc._max_pending_size > 0 and pending > nc._max_pending_size:
        await nc._flush_pending(force_flush=True)
    elif nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


async def sync_with_server(nc: Client) -> None:
    """Return once the server has processed everything this client sent so far.

    ``nc.flush()`` alone is not enough in nats-py 2.16: it writes its PING
    straight to the socket, ahead of commands still queued for the flusher
    task, so the PONG can come back before a just-sent SUB reached the server
    (measured: 25 of 300 subscribe+flush pairs were followed by a no-responders
    reply). Writing the queue out first restores the order.
    """
    await nc._flush_pending(force_flush=True)
    await nc.flush()


async def close_publish_async_inbox(nc: Client, js: JetStreamContext) -> None:
    """Unsubscribe the reply inbox nats-py opens on the first ``publish_async``.

    nats-py keeps no handle to it, so without this every stopped ``Mesh``
    that used :meth:`Mesh.send_durable_many` would leave one subscription behind.
    """
    prefix = js._async_reply_prefix
    if prefix is None:
        return
    subject = prefix.decode() + "*"
    for sub in list(nc._subs.values()):
        if sub.subject == subject:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


def api_prefix(js: JetStreamContext) -> str:
    """The JetStream API prefix of ``js`` (``$JS.API``, or a domain's), for
    hand-built API subjects (pull requests)."""
    prefix: str = js._prefix
    return prefix

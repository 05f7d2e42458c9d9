"""Following KV keys that hold decisions: a write is seen as it is stored, a missed one at the next resync.

The one local copy of KV keys in the project (dispatch gates, breakers, spent
budgets, quotas and slots, the metering processor's partials and marks).

A follower is a core NATS subscription to the keys' subjects (nothing is
left on the server, no consumer) plus a read of each key at start and every
``resync_s``, which repairs anything missed while disconnected. With a list of
keys it subscribes to each key's subject and reads each by a direct get: what a
worker's credentials allow, nothing more; ``values`` holds every listed key
(``parse(key, None)`` for one not set). Without one (``keys`` None: every key
under the prefix, of any number of tokens, for the gateway and the processors)
it subscribes to the prefix's wildcard and lists the bucket; ``values`` holds
the keys that are set (a deleted one goes, after ``on_change(key, parse(key,
None))``).

A reconnect (a nats-server restart, a network cut) is noticed within
:data:`RECONNECT_CHECK_S` and the keys are read again at once, not at the next
resync: writes made while the subscription was away are caught up then.
``revisions`` holds each key's KV revision as last read (a write seen live has
none until the next read).

What is not guaranteed: a follower that cannot reach NATS keeps the values it
last saw until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError

from mesh import names
from mesh.kv import current_entries
from mesh.stopping import cancel_within
from mesh.wire import protocol

__all__ = ["RECONNECT_CHECK_S", "KeyFollower", "raw"]

log = logging.getLogger(__name__)

RECONNECT_CHECK_S = 0.1  # how often a follower looks whether its connection was re-made

T = TypeVar("T")


def _reconnects(nc: Client) -> int:
    """How often ``nc`` reconnected (nats-py counts it once CONNECT went through, before it
    re-sends the subscriptions on the same connection)."""
    stats: dict[str, int] = getattr(nc, "stats", None) or {}
    return stats.get("reconnects", 0)


def raw(_: str, value: bytes | None) -> bytes | None:
    """The ``parse`` of a follower that keeps values as they are stored."""
    return value or None


class KeyFollower(Generic[T]):
    """Follows keys ``prefix + name`` of ``bucket``; ``values[name]`` is the current
    value parsed, and ``on_change(name, value)`` is called on each change
    (``on_change`` None: nobody is told). :meth:`start` returns once the current
    values are known; ``ready`` says a full read succeeded, and :meth:`synced` is
    called after each one (subclasses override it)."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        bucket: str,
        prefix: str,
        keys: list[str] | None,
        parse: Callable[[str, bytes | None], T],
        on_change: Callable[[str, T], None] | None = None,
        resync_s: float = 10.0,
    ) -> None:
        self.nc, self.js = nc, js
        self.bucket, self.prefix = bucket, prefix
        self.keys = set(keys) if keys is not None else None
        self.parse, self.on_change = parse, on_change
        self.resync_s = resync_s
        self.values: dict[str, T] = {key: parse(key, None) for key in self.keys or ()}
        self._subject = names.kv_subject(bucket, prefix)
        self._subs: list[Subscription] = []
        self._resync: asyncio.Task[None] | None = None
        self._writes: dict[str, int] = {}  # writes seen live, per key
        self._unreadable = False  # said once
        self._reconnects = _reconnects(nc)  # the connection's count at the last full read
        self.revisions: dict[str, int] = {}  # each key's KV revision as last read
        self.ready = False

    async def start(self, strict: bool = True) -> None:
        """``strict=False``: a first read that fails (NATS away) is logged and tried again
        within a second instead of raised; ``ready`` stays False until one succeeds."""
        # Subscribe first, then read: a write in between is seen by one or both.
        subjects = [self._subject + key for key in sorted(self.keys)] if self.keys is not None else [
            self._subject + ">"
        ]  # fmt: skip
        self._subs = [await self.nc.subscribe(subject, cb=self._on_write) for subject in subjects]
        try:
            await self._read_all()
        except Exception as exc:
            if strict:
                await self.stop()
                raise
            log.warning("%s %s* not read yet (%s); trying again", self.bucket, self.prefix, exc)
        self._resync = asyncio.create_task(self._resync_loop(), name=f"follow-{self.bucket}")

    async def stop(self) -> None:
        if self._resync is not None:  # its reads are NATS requests: a cancel can be lost
            await cancel_within([self._resync], asyncio.get_running_loop().time() + 5.0)
            self._resync = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs = []

    def _apply(self, key: str, data: bytes | None) -> None:
        """``key`` holds ``data`` now (None or empty: not set)."""
        if self.keys is not None and key not in self.keys:
            return
        value = self.parse(key, data or None)
        if self.keys is None and not data:  # a deleted key of a prefix goes
            if key not in self.values:
                return
            del self.values[key]
        elif key in self.values and self.values[key] == value:
            return
        else:
            self.values[key] = value
        if self.on_change is not None:
            self.on_change(key, value)

    async def _on_write(self, msg: Msg) -> None:
        key = msg.subject[len(self._subject) :]
        self._writes[key] = self._writes.get(key, 0) + 1
        operation = (msg.headers or {}).get("KV-Operation")
        self._apply(key, None if operation in ("DEL", "PURGE") else msg.data)

    def synced(self, reconnected: bool) -> None:
        """Called after each full read that succeeded (``reconnected``: the first
        since the connection was re-made); the values are as current as the read."""

    async def _read_all(self) -> None:
        before = dict(self._writes)
        reconnects = _reconnects(self.nc)
        found = await (self._read_listed() if self.keys is not None else self._read_every())
        for key, data in found.items():
            # A write seen live while reading is newer than what the read may hold.
            if self._writes.get(key) == before.get(key):
                self._apply(key, data)
        self.ready = True
        reconnected, self._reconnects = reconnects != self._reconnects, reconnects
        self.synced(reconnected)

    async def _read_listed(self) -> dict[str, bytes | None]:
        keys = sorted(self.keys or ())
        read = await asyncio.gather(*(self._read(key) for key in keys))
        return {key: data for key, (known, data) in zip(keys, read, strict=True) if known}

    async def _read_every(self) -> dict[str, bytes | None]:
        try:
            kv = await self.js.key_value(self.bucket)
            entries = await current_entries(self.js, kv, self.bucket, self.prefix + ">")
        except (BucketNotFoundError, NotFoundError):  # not provisioned: nothing set
            entries = []
        found: dict[str, bytes | None] = {e.key[len(self.prefix) :]: e.value for e in entries}
        self.revisions = {e.key[len(self.prefix) :]: e.revision for e in entries if e.revision}
        for gone in set(self.values) - set(found):  # deleted while this follower was away
            found[gone] = None
        return found

    async def _read(self, key: str) -> tuple[bool, bytes | None]:
        """``key``'s value now (None: not set) by a direct get (no stream info, no
        listing); ``(False, None)`` when the bucket cannot be read by key."""
        stream = names.kv_stream(self.bucket)
        subject = f"{protocol.api_prefix(self.js)}.DIRECT.GET.{stream}.{self._subject}{key}"
        try:
            msg = await self.nc.request(subject, b"", timeout=5)
        except NoRespondersError:  # the bucket is not provisioned, or has no direct gets
            if not self._unreadable:
                self._unreadable = True
                log.warning("%s cannot be read (run provision: it needs direct gets); "
                            "following its changes only", self.bucket)  # fmt: skip
            return False, None
        headers = msg.headers or {}
        if headers.get("Status") in ("404", "408") or headers.get("KV-Operation") in ("DEL", "PURGE"):
            self.revisions.pop(key, None)
            return True, None
        if headers.get("Status"):  # 503 and the like: the bucket cannot answer now
            raise ServiceUnavailableError(description=headers.get("Description"))
        if (seq := headers.get("Nats-Sequence", "")).isdigit():
            self.revisions[key] = int(seq)
        return True, msg.data

    async def _resync_loop(self) -> None:
        clock = asyncio.get_running_loop().time
        while True:
            due = clock() + (self.resync_s if self.ready else 1.0)  # a failed first read: soon
            # Until then, look for a reconnect: what was written while away is read at once.
            while clock() < due and _reconnects(self.nc) == self._reconnects:
                await asyncio.sleep(min(RECONNECT_CHECK_S, max(0.0, due - clock())))
            try:
                await self._read_all()
            except Exception as exc:  # NATS away: keep the values last seen
                log.warning("%s %s* not re-read: %s", self.bucket, self.prefix, exc)
                await asyncio.sleep(RECONNECT_CHECK_S)

"""Reading a whole KV bucket (or the keys under a prefix) without a consumer, and
following the keys under a prefix (:class:`KeyMirror`).

nats-py's ``KeyValue.keys()`` and ``watchall()`` create an ephemeral ordered
consumer that outlives ``watcher.stop()`` by its inactive threshold (5
minutes): a listing served once per request left one consumer behind per
call. Here the keys come from the bucket stream's subject counts (one
``STREAM.INFO``) and each value from a direct get, so a listing leaves
nothing on the server, and it cannot end early as a watch's end-of-snapshot
marker can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from mesh import names

__all__ = ["KeyMirror", "current_entries"]

log = logging.getLogger(__name__)


async def current_entries(
    js: JetStreamContext, kv: KeyValue, bucket: str, pattern: str = ">"
) -> list[KeyValue.Entry]:
    """The current entries of ``bucket`` whose keys match ``pattern``, by key;
    deleted and purged keys are left out."""
    prefix = names.kv_subject(bucket, "")
    info = await js.stream_info(names.kv_stream(bucket), subjects_filter=prefix + pattern)
    found: list[KeyValue.Entry] = []
    for subject in sorted(info.state.subjects or {}):
        try:
            entry = await kv.get(subject[len(prefix) :])
        except NotFoundError:  # deleted (a marker remains), or expired meanwhile
            continue
        if entry.value:
            found.append(entry)
    return found


class KeyMirror:
    """A local copy of the keys of ``bucket`` under ``prefix`` (``"spent."``), kept
    current: a core subscription to their subjects (each write is seen as it is
    stored, nothing is left on the server), a full read at :meth:`start` and every
    ``resync_s``, which repairs what was missed while disconnected.

    ``values`` maps each key (without the prefix) to its bytes; ``on_change(key,
    value)`` (value None: deleted) is called for each change; ``ready`` says a
    full read succeeded. What is not guaranteed: while NATS is unreachable the
    copy is the last one seen.
    """

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        bucket: str,
        prefix: str,
        on_change: Callable[[str, bytes | None], None] | None = None,
        resync_s: float = 10.0,
    ) -> None:
        self.nc, self.js = nc, js
        self.bucket, self.prefix = bucket, prefix
        self.on_change = on_change
        self.resync_s = resync_s
        self.values: dict[str, bytes] = {}
        self.ready = False
        self._subject = names.kv_subject(bucket, prefix)
        self._sub: Subscription | None = None
        self._resync: asyncio.Task[None] | None = None
        self._live: set[str] | None = None  # keys written while a full read runs

    async def start(self, strict: bool = True) -> None:
        """Subscribe, then read everything. ``strict=False``: a read that fails (NATS
        away) is logged and tried again soon instead of raised; ``ready`` stays False."""
        # Subscribe first, then read: a write in between is seen by one or both.
        self._sub = await self.nc.subscribe(self._subject + ">", cb=self._on_write)
        try:
            await self.read_all()
        except Exception as exc:
            if strict:
                await self.stop()
                raise
            log.warning("%s %s* not read yet (%s); trying again", self.bucket, self.prefix, exc)
        self._resync = asyncio.create_task(self._resync_loop(), name=f"mirror-{self.bucket}-{self.prefix}")

    async def stop(self) -> None:
        task, self._resync = self._resync, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def _set(self, key: str, value: bytes | None) -> None:
        if value:
            if self.values.get(key) == value:
                return
            self.values[key] = value
        elif self.values.pop(key, None) is None:
            return
        if self.on_change is not None:
            self.on_change(key, value or None)

    async def _on_write(self, msg: Msg) -> None:
        operation = (msg.headers or {}).get("KV-Operation")
        key = msg.subject[len(self._subject) :]
        if self._live is not None:
            self._live.add(key)
        self._set(key, None if operation in ("DEL", "PURGE") else msg.data)

    async def read_all(self) -> None:
        """Read every key now; a key written live meanwhile keeps what the write said."""
        self._live = set()
        try:
            kv = await self.js.key_value(self.bucket)
            entries = await current_entries(self.js, kv, self.bucket, self.prefix + ">")
            live = self._live
        finally:
            self._live = None
        found = {e.key[len(self.prefix) :]: e.value or b"" for e in entries}
        for key in list(self.values):
            if key not in found and key not in live:
                self._set(key, None)
        for key, value in found.items():
            if key not in live:
                self._set(key, value)
        self.ready = True

    async def _resync_loop(self) -> None:
        pause = 1.0 if not self.ready else self.resync_s  # a failed first read is retried soon
        while True:
            await asyncio.sleep(pause)
            try:
                await self.read_all()
                pause = self.resync_s
            except Exception as exc:  # NATS away: keep what was seen
                log.warning("%s %s* not re-read: %s", self.bucket, self.prefix, exc)

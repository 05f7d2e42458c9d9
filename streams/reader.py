"""Read one partition (one stream) from a given offset into a bounded local buffer.

Each assigned partition gets a private, ephemeral, memory-backed pull consumer
(``AckPolicy.NONE``, ``DeliverPolicy.BY_START_SEQUENCE``): Faust tracks progress
itself and commits offsets to KV, so the server needs no acks. Positioning is
done by creating a consumer at the wanted sequence, which is what ``seek`` does.

Flow control is by credit: a pull for at most ``batch`` messages is outstanding
only while the buffer has room, so a paused partition (one Faust stops draining)
stops fetching by itself. A pull that gets no answer at all (the server was
restarted, the ephemeral consumer is gone) is detected after its expiry and the
consumer is re-created at the next offset to read, so no message is skipped or
delivered twice across a nats-server restart.

Pulls go through mesh's pull client (:class:`mesh.wire.puller.PullInbox`),
which reads deliveries straight off the connection: the raw payload and header
block are buffered as they are, with no ``Msg``, no header dict and no task hop
per message; the consumer decodes the headers when it hands the record to Faust.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable

from faust.types import TP
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh.wire.protocol import api_prefix
from mesh.wire.puller import PullInbox, PullStatus
from streams import naming
from streams.records import parse_reply

__all__ = ["PartitionReader"]

log = logging.getLogger(__name__)

#: ``(offset, timestamp in ns, payload, raw NATS header block or None)``
Record = tuple[int, int, bytes, bytes | None]


class _Stale(Exception):
    """A pull got no answer: the consumer has to be re-created."""


class PartitionReader:
    """Prefetches one partition from ``start(offset)`` onwards; ``take`` drains it."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        tp: TP,
        on_data: Callable[[], None],
        *,
        batch: int = 1000,
        max_buffered: int = 4000,
        expires: float = 2.0,
    ) -> None:
        self.tp = tp
        self.stream = naming.stream_name(tp.topic, tp.partition)
        self._nc = nc
        self._js = js
        self._on_data = on_data
        self._batch = batch
        self._max_buffered = max_buffered
        self._expires = expires
        self.buffer: deque[Record] = deque()
        #: Next offset the fetch loop will ask the server for.
        self._fetch_seq = 1
        #: Best known highwater (last offset + 1) from delivery metadata.
        self.highwater_hint = 0
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None

    def position(self) -> int:
        """Next offset :meth:`take` will return."""
        return self.buffer[0][0] if self.buffer else self._fetch_seq

    def start(self, offset: int) -> None:
        """(Re)start reading at ``offset``; anything buffered is dropped."""
        self.stop_nowait()
        self.buffer.clear()
        self._fetch_seq = max(1, offset)
        self._room.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"streams-reader-{self.stream}")

    @property
    def started(self) -> bool:
        return self._task is not None

    def take(self, limit: int) -> list[Record]:
        buf = self.buffer
        n = min(limit, len(buf))
        out = [buf.popleft() for _ in range(n)]
        if len(buf) < self._max_buffered - self._batch // 4:
            self._room.set()
        return out

    def stop_nowait(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        # Cancel until it is done: on Python 3.11 an ``asyncio.wait_for`` whose
        # inner wait completes as the cancellation arrives swallows it (gh-86296),
        # and the read loop then goes on; awaiting the task once hung for good.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            task.result()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("reader %s: %r; re-creating consumer at %d", self.stream, exc, self._fetch_seq)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            else:  # pragma: no cover - _consume only returns by raising
                return

    async def _consume(self) -> None:
        name = f"faust-{uuid.uuid4().hex}"
        config = ConsumerConfig(
            name=name,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self._fetch_seq,
            ack_policy=AckPolicy.NONE,
            inactive_threshold=30.0,
            mem_storage=True,
            num_replicas=1,
        )
        await self._js.add_consumer(self.stream, config)
        done = asyncio.Event()
        state = {"received": 0, "wanted": 0, "answered": False, "broken": False}
        buffer = self.buffer

        def on_data(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            state["answered"] = True
            seq, ts_ns, pending = parse_reply(reply)
            if seq >= self._fetch_seq:
                buffer.append((seq, ts_ns, data, headers))
                self._fetch_seq = seq + 1
                if seq + pending + 1 > self.highwater_hint:
                    self.highwater_hint = seq + pending + 1
                self._on_data()
            state["received"] += 1
            if state["received"] >= state["wanted"]:
                done.set()

        def on_status(status: PullStatus) -> None:
            state["answered"] = True
            if status.heartbeat:
                return
            # 404/408: the pull ended; anything else (409 consumer deleted,
            # leadership change, ...) means this consumer must be replaced.
            state["broken"] = not status.ended
            done.set()

        pulls = PullInbox(self._nc, self.stream, name, on_data, on_status, api_prefix=api_prefix(self._js))
        await pulls.start()
        try:
            while True:
                await self._room.wait()
                room = self._max_buffered - len(self.buffer)
                if room < self._batch // 4:
                    self._room.clear()
                    continue
                wanted = min(self._batch, room)
                state.update(received=0, wanted=wanted, answered=False)
                done.clear()
                await pulls.request(wanted, expires_s=self._expires)
                try:
                    await asyncio.wait_for(done.wait(), self._expires + 2.0)
                except TimeoutError:
                    if not state["answered"]:
                        raise _Stale(f"no answer to pull on {self.stream}") from None
                if state["broken"]:
                    raise _Stale(f"pull on {self.stream} ended abnormally")
        finally:
            with contextlib.suppress(Exception):
                await pulls.stop()
            self._delete_later(name)

    def _delete_later(self, name: str) -> None:
        async def delete() -> None:
            with contextlib.suppress(Exception):
                await self._js.delete_consumer(self.stream, name)

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(delete())

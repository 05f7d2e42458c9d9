"""Committed offsets of a consumer group, kept durably in a JetStream KV bucket.

Bucket ``faust-offsets-<group>``, key ``<topic>.<partition>``, value the next
offset to read (Kafka's convention: last processed + 1), as ASCII digits.
A commit returns only once every put is acknowledged by the server (file
storage), so a worker that is SIGKILLed afterwards resumes from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

from faust.types import TP
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BadRequestError, KeyDeletedError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from streams import naming

__all__ = ["OffsetStore"]


class OffsetStore:
    """Reads and writes one group's committed offsets."""

    def __init__(self, js: JetStreamContext, group_id: str) -> None:
        self._js = js
        self.bucket = naming.offsets_bucket(group_id)
        self._kv: KeyValue | None = None
        self._lock = asyncio.Lock()

    async def _store(self) -> KeyValue:
        if self._kv is None:
            async with self._lock:
                if self._kv is None:
                    try:
                        self._kv = await self._js.key_value(self.bucket)
                    except (NotFoundError, BadRequestError):
                        self._kv = await self._js.create_key_value(
                            bucket=self.bucket, history=1, storage=StorageType.FILE
                        )
        return self._kv

    async def read(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """Committed offset per partition; ``None`` where nothing was committed."""
        kv = await self._store()

        async def one(tp: TP) -> int | None:
            try:
                entry = await kv.get(naming.offset_key(tp.topic, tp.partition))
            except (KeyNotFoundError, KeyDeletedError):
                return None
            return int(entry.value) if entry.value else None

        tps = list(tps)
        values = await asyncio.gather(*(one(tp) for tp in tps))
        return dict(zip(tps, values, strict=True))

    async def commit(self, offsets: Mapping[TP, int]) -> None:
        """Store ``offsets`` (next offset to read per partition); returns once durable."""
        kv = await self._store()
        await asyncio.gather(
            *(
                kv.put(naming.offset_key(tp.topic, tp.partition), str(offset).encode())
                for tp, offset in offsets.items()
            )
        )

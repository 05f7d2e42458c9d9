"""Committed offsets of a consumer group, kept durably in a JetStream KV bucket.

Bucket ``faust-offsets-<group>``, key ``<topic>.<partition>``, value
``{"offset": <next offset to read>, "generation": <group generation>}``
(Kafka's convention for the offset: last processed + 1; plain ASCII digits,
the format before generations were stored, read as generation 0).
A commit returns only once every write is acknowledged by the server (file
storage), so a worker that is SIGKILLed afterwards resumes from it.

Fencing, as Kafka's coordinator refuses commits of an old generation: each
write is a compare-and-set on the entry it read, and an entry written by a
newer generation than the committer's is never overwritten. A member that was
declared dead (a stalled process that still believes it holds its partitions)
therefore cannot move the new owner's offsets back, even when its commit
reaches the server late.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from faust.types import TP
from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from mesh.provision import placed
from streams import naming

__all__ = ["OffsetStore"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Entry:
    revision: int  # 0: no such key (nothing to compare-and-set against)
    offset: int | None
    generation: int

    @classmethod
    def parse(cls, revision: int, raw: bytes | None) -> _Entry:
        if not raw:
            return cls(revision, None, 0)
        if raw[:1] == b"{":
            data = json.loads(raw)
            return cls(revision, int(data["offset"]), int(data["generation"]))
        return cls(revision, int(raw), 0)


def _value(offset: int, generation: int) -> bytes:
    return json.dumps({"offset": offset, "generation": generation}).encode()


class OffsetStore:
    """Reads and writes one group's committed offsets."""

    def __init__(self, js: JetStreamContext, group_id: str, replicas: int = 1) -> None:
        self._js = js
        self.replicas = replicas  # of the bucket, if this store creates it
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
                        self._kv = await placed(
                            lambda: self._js.create_key_value(
                                bucket=self.bucket,
                                history=1,
                                storage=StorageType.FILE,
                                replicas=self.replicas,
                            ),
                            f"offsets bucket {self.bucket}",
                        )
        return self._kv

    async def read(self, tps: Iterable[TP]) -> dict[TP, int | None]:
        """Committed offset per partition; ``None`` where nothing was committed."""
        kv = await self._store()
        tps = list(tps)
        entries = await asyncio.gather(*(self._entry(kv, tp) for tp in tps))
        return {tp: entry.offset for tp, entry in zip(tps, entries, strict=True)}

    async def commit(
        self,
        offsets: Mapping[TP, int],
        generation: int,
        newest_generation: Callable[[], Awaitable[int]] | None = None,
    ) -> set[TP]:
        """Store ``offsets`` (next offset to read per partition) as written by
        ``generation``; returns once durable, with the partitions it refused.

        A partition is refused when its entry was written by a newer generation:
        its new owner's offset stands. ``newest_generation`` reads the group's
        newest generation number from the server; a stored generation above it
        comes from an earlier life of the group (its bucket was deleted and
        numbering restarted) and does not fence.
        """
        kv = await self._store()
        refused: set[TP] = set()
        pending = dict(offsets)
        while pending:
            tps = list(pending)
            entries = dict(zip(tps, await asyncio.gather(*(self._entry(kv, tp) for tp in tps)), strict=True))
            newer = {tp for tp, entry in entries.items() if entry.generation > generation}
            if newer and newest_generation is not None:
                # Read after the entries: a generation that wrote one of them exists by now.
                newest = await newest_generation()
                newer = {tp for tp in newer if entries[tp].generation <= newest}
            refused |= newer
            writes = [tp for tp in tps if tp not in newer]
            results = await asyncio.gather(
                *(
                    kv.update(
                        naming.offset_key(tp.topic, tp.partition),
                        _value(pending[tp], generation),
                        last=entries[tp].revision,
                    )
                    for tp in writes
                ),
                return_exceptions=True,
            )
            retry = {}
            for tp, result in zip(writes, results, strict=True):
                if isinstance(result, KeyWrongLastSequenceError):
                    retry[tp] = pending[tp]  # written meanwhile: look again
                elif isinstance(result, BaseException):
                    raise result
            pending = retry
        if refused:
            log.warning(
                "not committing %d offsets of generation %d: a newer generation owns them (%s)",
                len(refused), generation, sorted(refused),
            )  # fmt: skip
        return refused

    @staticmethod
    async def _entry(kv: KeyValue, tp: TP) -> _Entry:
        try:
            entry = await kv.get(naming.offset_key(tp.topic, tp.partition))
        except KeyNotFoundError as exc:
            # A deleted key keeps a tombstone: the next write must name its revision.
            revision = exc.entry.revision if exc.entry is not None else None
            return _Entry(revision or 0, None, 0)
        return _Entry.parse(entry.revision or 0, entry.value)

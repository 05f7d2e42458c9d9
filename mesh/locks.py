"""Distributed locks (leases) in the ``af_locks`` KV bucket.

A lock is a key created with a per-message TTL (``kv.create(msg_ttl=)``): the
first creator holds it, everyone else gets :class:`LockHeld` naming the
holder. The holder renews it by compare-and-set on the revision it holds (a
renewal carries the TTL again), and releases it by a delete on that
revision. A holder that dies loses the lock when its last write expires
(whole seconds, at least 1: the server's limit); a holder that learns its
renewal was refused (:class:`LockLost`) must stop acting under it.

What is not guaranteed: a lease is time-based. A holder frozen past its TTL
(SIGSTOP, a long GC pause) may act once more before it hears that it lost
the lock; work done under a lock must itself be a compare-and-set on the
state it changes (the lifecycle's transitions are) when that matters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mesh import names
from mesh.errors import WRONG_LAST_SEQUENCE, MeshError

__all__ = ["Lease", "LockHeld", "LockLost", "Locks"]

DEFAULT_TTL_S = 10


class LockHeld(MeshError):
    """Someone else holds the lock."""

    status = 409

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{key!r} is locked by {holder!r}; try again once it is released or expires")
        self.key, self.holder = key, holder


class LockLost(MeshError):
    """A renewal or release was refused: the lease expired and another may hold it."""

    status = 409

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"{holder!r} no longer holds {key!r} (its lease expired or was taken)")
        self.key, self.holder = key, holder


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    holder: str
    revision: int
    ttl_s: int


class Locks:
    """Leases on keys of ``af_locks`` (provisioned by :func:`mesh.provision.provision`)."""

    def __init__(self, js: JetStreamContext, bucket: str = names.BUCKET_LOCKS) -> None:
        self._js = js
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._bucket)
        return self._kv

    async def acquire(self, key: str, holder: str, ttl_s: int = DEFAULT_TTL_S) -> Lease:
        """Take ``key`` for ``ttl_s`` seconds, or raise :class:`LockHeld`."""
        if int(ttl_s) != ttl_s or ttl_s < 1:
            raise ValueError(f"a lock's TTL is whole seconds, at least 1 (not {ttl_s})")
        kv = await self._store()
        for _ in range(3):
            try:
                revision = await kv.create(key, holder.encode(), msg_ttl=ttl_s)
            except KeyWrongLastSequenceError:
                raise LockHeld(key, await self.holder(key) or "(just released)") from None
            except KeyNotFoundError:  # expired between nats-py's create and its look at the key
                continue
            return Lease(key, holder, revision, int(ttl_s))
        raise LockHeld(key, await self.holder(key) or "(changing hands)")

    async def renew(self, lease: Lease) -> Lease:
        """Extend ``lease`` by its TTL from now, or raise :class:`LockLost`."""
        # A raw CAS publish: nats-py's KeyValue.update takes no TTL.
        headers = {"Nats-Expected-Last-Subject-Sequence": str(lease.revision)}
        subject = names.kv_subject(self._bucket, lease.key)
        try:
            ack = await self._js.publish(subject, lease.holder.encode(), headers=headers, msg_ttl=lease.ttl_s)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise LockLost(lease.key, lease.holder) from None
            raise
        revision = ack.seq
        return Lease(lease.key, lease.holder, revision, lease.ttl_s)

    async def release(self, lease: Lease) -> None:
        """Give ``lease`` up; a lease that was lost already is left alone."""
        kv = await self._store()
        try:
            await kv.delete(lease.key, last=lease.revision)
        except APIError as exc:  # nats-py raises the bare BadRequestError here
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise

    async def holder(self, key: str) -> str | None:
        """Who holds ``key`` now, if anyone."""
        kv = await self._store()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    @contextlib.asynccontextmanager
    async def hold(self, key: str, holder: str, ttl_s: int = DEFAULT_TTL_S) -> AsyncIterator[asyncio.Event]:
        """Hold ``key`` for the block, renewed every third of its TTL; released
        on exit. Yields an event set if a renewal is refused (the lock is lost:
        stop acting under it)."""
        lease = await self.acquire(key, holder, ttl_s)
        lost = asyncio.Event()

        async def keep() -> None:
            nonlocal lease
            while True:
                await asyncio.sleep(lease.ttl_s / 3)  # the renewal period, not a wait for an event
                try:
                    lease = await self.renew(lease)
                except LockLost:
                    lost.set()
                    return
                except Exception:  # NATS briefly away: try again next period, the TTL decides
                    continue

        renewer = asyncio.get_running_loop().create_task(keep(), name=f"lock-{key}")
        try:
            yield lost
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not lost.is_set():
                await self.release(lease)

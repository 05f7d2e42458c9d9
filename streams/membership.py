"""Consumer-group coordination without Kafka's group coordinator.

Everything lives in one KV bucket per group (``faust-group-<group>``):

``m.<member>``   each member's heartbeat: its subscription, Faust assignor
                 metadata and the last generation it has released (``acked``).
                 Re-put every ``heartbeat_s``.
``leader``       the leader lease: created with ``create`` (only one wins),
                 renewed with compare-and-set on its revision.
``assignment``   the current generation: member list and each member's
                 encoded assignment, written by the leader with compare-and-set.

Liveness is judged by *revision change observed locally* (monotonic clock),
never by comparing wall clocks: a member whose key has not changed for
``session_timeout_s`` is dead. The leader runs Faust's own
:class:`~faust.assignor.PartitionAssignor` over the live members (so tables get
their active and standby changelog partitions, co-partitioning holds) whenever
the live set or a subscription changes, and writes generation ``g + 1``. A dead
leader's lease is taken over by compare-and-set after the same timeout.

Barrier: a member that sees generation ``g`` first revokes everything it holds
(Faust waits for in-flight events and commits), then publishes ``acked = g``;
it starts on its new partitions only once every *other* member of ``g`` has
acked ``g`` (or is dead). So a partition is never read by its new owner before
its previous owner committed and stopped. Takeover bound after a crash:
``session_timeout_s + 3 * heartbeat_s`` plus the table recovery time.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import StorageType
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from mesh.provision import placed
from streams import naming

__all__ = ["Generation", "GroupMembership"]

log = logging.getLogger(__name__)

LEADER = "leader"
ASSIGNMENT = "assignment"
MEMBER_PREFIX = "m."

#: ``{member_id: encoded assignor metadata} -> {member_id: encoded assignment}``
AssignFn = Callable[[Mapping[str, bytes]], Awaitable[Mapping[str, bytes]]]


@dataclass(frozen=True)
class Generation:
    """One group generation: who is in it and what each member owns (encoded)."""

    number: int
    members: tuple[str, ...]
    assignments: Mapping[str, bytes] = field(default_factory=dict)
    subscriptions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def loads(cls, raw: bytes) -> Generation:
        data = json.loads(raw)
        return cls(
            number=int(data["generation"]),
            members=tuple(data["members"]),
            assignments={m: base64.b64decode(a) for m, a in data["assignments"].items()},
            subscriptions={m: tuple(t) for m, t in data["subscriptions"].items()},
        )

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "generation": self.number,
                "members": list(self.members),
                "assignments": {m: base64.b64encode(a).decode() for m, a in self.assignments.items()},
                "subscriptions": {m: list(t) for m, t in self.subscriptions.items()},
            }
        ).encode()


@dataclass
class _Seen:
    revision: int
    changed_at: float
    data: dict[str, object]


class GroupMembership:
    """Heartbeats, leader election and generation hand-over for one group member."""

    def __init__(
        self,
        js: JetStreamContext,
        group_id: str,
        member_id: str,
        *,
        metadata: Callable[[], bytes],
        assign: AssignFn,
        heartbeat_s: float = 1.0,
        session_timeout_s: float = 6.0,
        replicas: int = 1,
    ) -> None:
        self._js = js
        self.replicas = replicas  # of the group's bucket, if this member creates it
        self.group_id = group_id
        self.member_id = member_id
        self._metadata = metadata
        self._assign = assign
        self.heartbeat_s = heartbeat_s
        self.session_timeout_s = session_timeout_s
        self.subscription: tuple[str, ...] = ()
        self.acked = 0
        self.latest: Generation | None = None
        self._assignment_rev = 0
        self._seen: dict[str, _Seen] = {}
        self._lease_rev: int | None = None
        self._beat = 0
        self._changed = asyncio.Event()
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_ok = time.monotonic()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        bucket = naming.group_bucket(self.group_id)
        try:
            self._kv = await self._js.key_value(bucket)
        except (NotFoundError, BadRequestError):
            try:
                self._kv = await placed(
                    lambda: self._js.create_key_value(
                        bucket=bucket, history=1, storage=StorageType.FILE, replicas=self.replicas
                    ),
                    f"group bucket {bucket}",
                )
            except BadRequestError:
                self._kv = await self._js.key_value(bucket)
        await self._tick()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="streams-heartbeat")

    async def stop(self) -> None:
        """Leave the group: stop heartbeating, drop our key and (if held) the lease."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        kv = self._kv
        if kv is None:
            return
        with contextlib.suppress(Exception):
            await kv.delete(self._member_key(self.member_id))
        if self._lease_rev is not None:
            with contextlib.suppress(Exception):
                await kv.delete(LEADER, last=self._lease_rev)
            self._lease_rev = None

    @property
    def is_leader(self) -> bool:
        return self._lease_rev is not None

    def set_subscription(self, topics: tuple[str, ...]) -> None:
        self.subscription = tuple(sorted(set(topics)))

    # -- what the consumer awaits ---------------------------------------------------

    async def next_generation(self, after: int) -> Generation:
        """The newest generation numbered above ``after`` (waits for one)."""
        while self.latest is None or self.latest.number <= after:
            self._changed.clear()
            await self._changed.wait()
        return self.latest

    async def release(self, generation: int) -> None:
        """Announce that we hold nothing from before ``generation`` any more."""
        self.acked = max(self.acked, generation)
        await self._heartbeat()

    async def announce(self) -> None:
        """Heartbeat now (e.g. after a subscription change) instead of at the next tick."""
        await self._heartbeat()

    async def wait_released(self, gen: Generation, poll_s: float = 0.05) -> bool:
        """Wait until every other member of ``gen`` released it (or is dead).

        Returns ``False`` when a newer generation superseded ``gen`` meanwhile.
        """
        kv = self._require_kv()
        while True:
            if self.latest is not None and self.latest.number > gen.number:
                return False
            waiting = []
            now = time.monotonic()
            for member in gen.members:
                if member == self.member_id:
                    continue
                seen = await self._observe(kv, member, now)
                if seen is None or now - seen.changed_at >= self.session_timeout_s:
                    continue  # gone or dead: it holds nothing any more
                acked = seen.data.get("acked", 0)
                if not isinstance(acked, int) or acked < gen.number:
                    waiting.append(member)
            if not waiting:
                return True
            await asyncio.sleep(poll_s)

    def lease_valid(self) -> bool:
        """Whether our own heartbeat went through recently enough that the group
        cannot have declared us dead yet (less than half the session timeout ago).

        A member whose event loop stalled, or that lost NATS, stops handing out
        records until a heartbeat succeeds again and shows it the newest
        generation: a member declared dead must not keep processing partitions
        that already have a new owner.
        """
        return time.monotonic() - self._last_ok < self.session_timeout_s / 2

    async def newest_number(self) -> int:
        """The number of the group's newest generation, read from the server now
        (``latest`` is only as fresh as our last heartbeat); 0 before the first."""
        try:
            entry = await self._require_kv().get(ASSIGNMENT)
        except KeyNotFoundError:
            return 0
        return Generation.loads(entry.value).number if entry.value else 0

    def is_current(self, generation: int) -> bool:
        """Whether ``generation`` is still the newest one we know of (commit fencing)."""
        return self.latest is not None and self.latest.number == generation

    # -- internals ------------------------------------------------------------------

    def _require_kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("membership not started")
        return self._kv

    @staticmethod
    def _member_key(member_id: str) -> str:
        return MEMBER_PREFIX + naming.escape(member_id)

    async def _observe(self, kv: KeyValue, member: str, now: float) -> _Seen | None:
        key = self._member_key(member)
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            self._seen.pop(key, None)
            return None
        return self._record(key, entry.revision or 0, entry.value, now)

    def _record(self, key: str, revision: int, value: bytes | None, now: float) -> _Seen:
        seen = self._seen.get(key)
        if seen is None or seen.revision != revision:
            data = json.loads(value) if value and key.startswith(MEMBER_PREFIX) else {}
            seen = _Seen(revision=revision, changed_at=now, data=data)
            self._seen[key] = seen
        return seen

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down or restarting: keep trying
                log.warning("group %s heartbeat failed: %r", self.group_id, exc)

    async def _heartbeat(self) -> None:
        self._beat += 1
        record = {
            "id": self.member_id,
            "beat": self._beat,
            "acked": self.acked,
            "topics": list(self.subscription),
            "meta": base64.b64encode(self._metadata()).decode(),
        }
        await self._require_kv().put(self._member_key(self.member_id), json.dumps(record).encode())

    async def _tick(self) -> None:
        kv = self._require_kv()
        sent_at = time.monotonic()
        await self._heartbeat()
        now = time.monotonic()
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        entries = await asyncio.gather(*(self._get(kv, k) for k in keys))
        present = set()
        for key, entry in zip(keys, entries, strict=True):
            if entry is None:
                continue
            revision, value = entry
            present.add(key)
            if key == ASSIGNMENT and value:
                self._assignment_rev = revision
                gen = Generation.loads(value)
                if self.latest is None or gen.number > self.latest.number:
                    self.latest = gen
                    self._changed.set()
            else:
                self._record(key, revision, value, now)
        # A key one listing missed is looked up before it is forgotten: a member
        # whose heartbeat raced the listing is alive (a spurious generation
        # without it would rebalance the group twice); one that left is gone.
        missing = list(set(self._seen) - present)
        for key, entry in zip(
            missing, await asyncio.gather(*(self._get(kv, k) for k in missing)), strict=True
        ):
            if entry is None:
                del self._seen[key]
            else:
                self._record(key, entry[0], entry[1], now)
        self._last_ok = sent_at
        await self._lead(kv, now)

    @staticmethod
    async def _get(kv: KeyValue, key: str) -> tuple[int, bytes | None] | None:
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        return entry.revision or 0, entry.value

    async def _lead(self, kv: KeyValue, now: float) -> None:
        if not await self._hold_lease(kv, now):
            return
        live = {
            key[len(MEMBER_PREFIX) :]: seen
            for key, seen in self._seen.items()
            if key.startswith(MEMBER_PREFIX)
            and now - seen.changed_at < self.session_timeout_s
            and seen.data.get("topics")
        }
        members = {str(s.data["id"]): s for s in live.values()}
        wanted: dict[str, tuple[str, ...]] = {
            m: tuple(str(t) for t in s.data["topics"])  # type: ignore[attr-defined]
            for m, s in members.items()
        }
        current = self.latest
        if current is not None and dict(current.subscriptions) == wanted:
            return
        if not wanted:
            return
        metadata = {m: base64.b64decode(str(s.data["meta"])) for m, s in members.items()}
        try:
            assignments = await self._assign(metadata)
        except Exception as exc:
            log.warning("group %s: assignment postponed: %r", self.group_id, exc)
            return
        gen = Generation(
            number=(current.number if current else 0) + 1,
            members=tuple(sorted(wanted)),
            assignments=dict(assignments),
            subscriptions=wanted,
        )
        try:
            if current is None and self._assignment_rev == 0:
                self._assignment_rev = await kv.create(ASSIGNMENT, gen.dumps())
            else:
                self._assignment_rev = await kv.update(ASSIGNMENT, gen.dumps(), last=self._assignment_rev)
        except KeyWrongLastSequenceError:
            return  # someone else wrote a generation; we will read it next tick
        log.info("group %s: generation %d for %s", self.group_id, gen.number, gen.members)
        self.latest = gen
        self._changed.set()

    async def _hold_lease(self, kv: KeyValue, now: float) -> bool:
        me = self.member_id.encode()
        try:
            if self._lease_rev is not None:
                self._lease_rev = await kv.update(LEADER, me, last=self._lease_rev)
                return True
            seen = self._seen.get(LEADER)
            if seen is None:
                self._lease_rev = await kv.create(LEADER, me)
            elif now - seen.changed_at >= self.session_timeout_s:
                self._lease_rev = await kv.update(LEADER, me, last=seen.revision)
            else:
                return False
        except KeyWrongLastSequenceError:
            self._lease_rev = None
            return False
        log.info("group %s: %s is leader", self.group_id, self.member_id)
        return True

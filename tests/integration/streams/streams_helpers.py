"""Test helpers that talk to JetStream directly (never through the driver under test)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoStreamResponseError, NotFoundError

from mesh import names
from streams import naming
from streams.partitioner import partition_for
from streams.records import decode_headers, encode_headers
from tests import helpers

KEYS = 1000


def key_of(i: int) -> bytes:
    return f"key-{i % KEYS:04d}".encode()


async def topic_declared(js: JetStreamContext, topic: str, partitions: int = 4) -> bool:
    """Whether every partition stream of ``topic`` exists and has a leader (on a cluster)."""
    for p in range(partitions):
        try:
            info = await js.stream_info(naming.stream_name(topic, p))
        except Exception:
            return False
        if info.cluster is not None and not info.cluster.leader:
            return False
    return True


async def publish_events(
    js: JetStreamContext,
    topic: str,
    n: int,
    *,
    partitions: int = 4,
    timestamp_of: Callable[[int], float] | None = None,
    window: int = 2000,
) -> Counter[int]:
    """Publish ``n`` events the way a Faust producer would; returns events per partition.

    A publish answered "no responders" (an R3 partition between leaders) stored
    nothing, so it is sent again, for up to 30 s; any other error raises.
    """
    per_partition: Counter[int] = Counter()
    pending: list[tuple[asyncio.Future[object], str, dict[str, str] | None]] = []

    async def settle() -> None:
        futures = (f for f, _, _ in pending)
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 30)
        for result, (_, subject, headers) in zip(results, pending, strict=True):
            if isinstance(result, NoStreamResponseError):
                again = functools.partial(_published, js, subject, headers)
                await helpers.eventually(again, 30, f"a publish to {subject}", every=0.05)
            elif isinstance(result, BaseException):
                raise result
        pending.clear()

    for i in range(n):
        key = key_of(i)
        p = partition_for(key, partitions)
        per_partition[p] += 1
        ts = timestamp_of(i) if timestamp_of else None
        subject = naming.partition_subject(topic, p)
        headers = encode_headers(key, b"1", ts, None)
        pending.append((await js.publish_async(subject, b"1", headers=headers), subject, headers))
        if len(pending) >= window:
            await settle()
    await settle()
    return per_partition


async def _published(js: JetStreamContext, subject: str, headers: dict[str, str] | None) -> bool:
    try:
        await js.publish(subject, b"1", headers=headers)
    except NoStreamResponseError:
        return False
    return True


async def read_changelog(js: JetStreamContext, topic: str, partitions: int = 4) -> dict[int, dict[str, int]]:
    """The newest value per key of each changelog partition, read straight from the streams."""
    out: dict[int, dict[str, int]] = defaultdict(dict)
    for p in range(partitions):
        stream = naming.stream_name(topic, p)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            continue
        if not info.state.messages:
            continue
        sub = await js.subscribe(
            naming.partition_subject(topic, p) + ".*", stream=stream, ordered_consumer=True
        )
        got = 0
        try:
            while got < info.state.messages:
                msg = await sub.next_msg(timeout=5)
                got += 1
                h = decode_headers(msg.headers)
                key = json.loads(h.key) if h.key else None
                if h.is_null:
                    out[p].pop(str(key), None)
                else:
                    out[p][str(key)] = json.loads(msg.data)
        finally:
            await sub.unsubscribe()
    return out


async def committed_offsets(
    js: JetStreamContext, group: str, topic: str, partitions: int = 4
) -> dict[int, int]:
    """Committed next-offset per partition (1 = nothing committed)."""
    kv = await js.key_value(naming.offsets_bucket(group))
    out = {}
    for p in range(partitions):
        try:
            entry = await kv.get(naming.offset_key(topic, p))
            out[p] = int(json.loads(entry.value)["offset"]) if entry.value else 1
        except KeyNotFoundError:
            out[p] = 1
    return out


def partition_of_key(key: str, partitions: int = 4) -> int:
    return partition_for(key.encode(), partitions)


# The suite's one poll-with-deadline, polling gently: these checks read KV over the network.
eventually = functools.partial(helpers.eventually, every=0.2)


@dataclass(frozen=True)
class GroupWrite:
    """One write to a group's KV bucket, stamped by the server."""

    at: float  # server time, seconds
    kind: str  # "beat" (a member's key), "lease" or "generation"
    member: str  # who wrote the beat or holds the lease; "" for a generation
    members: tuple[str, ...] = ()  # of a generation


@dataclass
class GroupLog:
    """Every write to a group's bucket in server order: the members' heartbeats
    are the clock against which a takeover is judged, so a slow machine (slower
    heartbeats) does not fail it and a slow takeover (more heartbeats) does."""

    writes: list[GroupWrite] = field(default_factory=list)
    _sub: Subscription | None = None

    async def start(self, js: JetStreamContext, group: str) -> None:
        async def on_write(msg: Msg) -> None:
            key = msg.subject.split(".", 2)[2]
            at = msg.metadata.timestamp.timestamp()
            if not msg.data:  # a member left (delete marker)
                return
            if key == "assignment":
                members = tuple(json.loads(msg.data)["members"])
                self.writes.append(GroupWrite(at, "generation", "", members))
            elif key == "leader":
                self.writes.append(GroupWrite(at, "lease", msg.data.decode()))
            else:
                self.writes.append(GroupWrite(at, "beat", json.loads(msg.data)["id"]))

        subject = names.kv_subject(naming.group_bucket(group), ">")
        self._sub = await js.subscribe(subject, cb=on_write, ordered_consumer=True)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def beats(self, member: str) -> list[float]:
        return [w.at for w in self.writes if w.kind == "beat" and w.member == member]

    def drop(self, member: str) -> GroupWrite | None:
        """The first generation without ``member`` after one with it."""
        was_in = False
        for w in self.writes:
            if w.kind == "generation":
                if member in w.members:
                    was_in = True
                elif was_in:
                    return w
        return None

    def assert_dropped_on_time(self, victim: str, survivor: str, session_timeout: float) -> None:
        """``victim`` was dropped from the group by ``survivor`` no sooner than
        ``session_timeout`` after its last heartbeat, and no later than two of the
        survivor's heartbeats after that.

        The survivor times a member by when *it saw* the member's key change, at
        one of its own heartbeat ticks: no earlier than its last beat before the
        victim's last write, and no later than its first beat after it.
        """
        drop = self.drop(victim)
        assert drop is not None, f"{victim} was never dropped"
        last_beat = max(at for at in self.beats(victim) if at < drop.at)
        last_write = max(w.at for w in self.writes if w.member == victim and w.at < drop.at)
        beats = self.beats(survivor)
        seen_from = max(at for at in beats if at <= last_beat)
        seen_by = min(at for at in beats if at > last_write)
        assert drop.at - seen_from >= session_timeout, (
            f"dropped {drop.at - seen_from:.3f}s after the survivor could have seen its last heartbeat"
        )
        late = [at for at in beats if seen_by + session_timeout < at < drop.at]
        assert len(late) <= 2, f"{len(late)} survivor heartbeats between the session timeout and the drop"

    def ready(self, first: str, then: str) -> bool:
        """Whether a heartbeat of ``first`` was logged before one of ``then``."""
        firsts = self.beats(first)
        return bool(firsts) and any(at > firsts[0] for at in self.beats(then))

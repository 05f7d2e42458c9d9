"""Named channels: what they are called, where they live, and who listens.

A channel name says its guarantee: ``durable:carbon.calculate`` is stored in
JetStream (stream ``AF_CHANNELS``, subject ``af.ch.carbon.calculate``) and is
point-to-point: each message is handled by exactly one subscriber of the
channel (its subscribers form one consumer group, the durable pull consumer
``ch_carbon_calculate``), at least once. ``ephemeral:agent.health`` is a core
NATS subject (``af.eph.agent.health``): fan-out to every subscriber present at
that moment, best effort by design; ephemeral subscriptions may use ``*`` and
``>`` wildcards.

Live subscribers are registered in the KV bucket ``af_channels`` (one key per
subscriber, renewed by heartbeat, gone ``REGISTRY_TTL_S`` after a crash). The
per-channel subscriber limit of ephemeral channels is enforced with
compare-and-set slots (``ephemeral.<channel>.<slot>``), so it holds across
processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import socket
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from nats.aio.client import Client
from nats.errors import ConnectionClosedError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

from mesh import names
from mesh.channels.errors import InvalidChannelName, TooManySubscribers
from mesh.envelope import CONTENT_TYPE, ChannelType, Envelope, decode, new_id, utcnow
from mesh.errors import DecodeError
from mesh.kv import current_entries
from mesh.provision import (
    CHANNEL_REGISTRY_TTL_S,
    channel_bucket_config,
    channel_stream_config,
    ensure_stream,
    placed,
)
from mesh.wire.connection import consumers_of
from mesh.wire.protocol import sync_with_server

__all__ = [
    "BROADCAST",
    "CHANNELS_BUCKET",
    "CHANNELS_STREAM",
    "Channel",
    "ChannelInfo",
    "SubscriberInfo",
    "SubscriberRegistry",
    "channel_bucket_config",
    "channel_stream_config",
    "ensure_channels",
    "list_channels",
    "sync_with_server",
    "tail",
]

log = logging.getLogger(__name__)

CHANNELS_STREAM: Final = names.STREAM_CHANNELS
CHANNELS_BUCKET: Final = names.BUCKET_CHANNELS
DURABLE_PREFIX: Final = names.DURABLE_CHANNEL_PREFIX
EPHEMERAL_PREFIX: Final = names.EPHEMERAL_CHANNEL_PREFIX
REGISTRY_TTL_S: Final = CHANNEL_REGISTRY_TTL_S
BROADCAST: Final = "ephemeral:broadcast"

_TOKEN = r"[a-z0-9][a-z0-9-]{0,62}"
_DURABLE_RE = re.compile(rf"^{_TOKEN}(\.{_TOKEN})*$")
_EPHEMERAL_RE = re.compile(rf"^(?:{_TOKEN}|\*)(?:\.(?:{_TOKEN}|\*))*(?:\.>)?$|^>$")
_KINDS: Final = {"durable": ChannelType.DURABLE, "ephemeral": ChannelType.EPHEMERAL}


@dataclass(frozen=True, slots=True)
class Channel:
    """A parsed channel name: ``durable:a.b`` or ``ephemeral:a.b`` (wildcards allowed).

    Parsing is cached and the derived names are computed once, because a
    channel is resolved on every send.
    """

    kind: ChannelType
    name: str
    durable: bool = field(init=False, compare=False, repr=False)
    subject: str = field(init=False, compare=False, repr=False)
    text: str = field(init=False, compare=False, repr=False)
    is_pattern: bool = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        durable = self.kind is ChannelType.DURABLE
        object.__setattr__(self, "durable", durable)
        prefix = DURABLE_PREFIX if durable else EPHEMERAL_PREFIX
        object.__setattr__(self, "subject", f"{prefix}.{self.name}")
        object.__setattr__(self, "text", f"{self.kind.value.lower()}:{self.name}")
        object.__setattr__(self, "is_pattern", "*" in self.name or ">" in self.name)

    @classmethod
    def parse(cls, text: str) -> Channel:
        return _parse(text)

    @classmethod
    def of(cls, channel: Channel | str) -> Channel:
        return channel if isinstance(channel, Channel) else _parse(channel)

    @property
    def consumer(self) -> str:
        """The durable consumer (consumer group) of a durable channel."""
        return names.channel_consumer(self.name)

    @property
    def registry_prefix(self) -> str:
        encoded = self.name.replace("*", "_any").replace(">", "_rest")
        return f"{self.kind.value.lower()}.{encoded}"

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Channel:
    kind_text, sep, name = text.partition(":")
    kind = _KINDS.get(kind_text)
    if not sep or kind is None:
        raise InvalidChannelName(f"channel {text!r} must start with 'durable:' or 'ephemeral:'")
    pattern = _DURABLE_RE if kind is ChannelType.DURABLE else _EPHEMERAL_RE
    if len(name) > 200 or not pattern.match(name):
        rule = "dot-separated tokens of [a-z0-9-]"
        if kind is ChannelType.EPHEMERAL:
            rule += ", '*' for one token, '>' as the last token"
        raise InvalidChannelName(f"channel {text!r}: the name must be {rule}")
    return Channel(kind, name)


def channel_of_subject(subject: str) -> Channel | None:
    for prefix, kind in (
        (DURABLE_PREFIX, ChannelType.DURABLE),
        (EPHEMERAL_PREFIX, ChannelType.EPHEMERAL),
    ):
        if subject.startswith(prefix + "."):
            return Channel(kind, subject[len(prefix) + 1 :])
    return None


async def ensure_channels(js: JetStreamContext) -> KeyValue:
    """Create ``AF_CHANNELS`` and ``af_channels`` if missing; idempotent. An
    existing stream keeps its config: ``provision`` sets it (replicas, message
    size), and a Mesh starting with defaults must not scale an R3 stream to R1."""
    await ensure_stream(js, channel_stream_config(), update=False)
    try:
        return await js.key_value(CHANNELS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await placed(lambda: js.create_key_value(channel_bucket_config()), "the channels bucket")


class SubscriberInfo(BaseModel):
    channel: str
    subscriber_id: str
    agent: str | None = None
    host: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)
    slot: int | None = None
    since: datetime = Field(default_factory=utcnow)


class ChannelInfo(BaseModel):
    """One channel as ``GET /api/v1/channels`` and ``channels ls`` show it."""

    name: str
    kind: ChannelType
    subject: str
    subscribers: list[SubscriberInfo] = Field(default_factory=list)
    pending: int | None = None  # durable: stored, not yet delivered
    ack_pending: int | None = None  # durable: delivered, not yet acked
    redelivered: int | None = None


@dataclass(slots=True)
class Registration:
    key: str
    info: SubscriberInfo
    revision: int


class SubscriberRegistry:
    """This process's entries in ``af_channels``, kept alive by one heartbeat task."""

    def __init__(self, js: JetStreamContext, kv: KeyValue, ttl_s: float = REGISTRY_TTL_S) -> None:
        self._js = js
        self._kv = kv
        self._ttl_s = ttl_s
        self._mine: dict[str, Registration] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat(), name="af-channels-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        for registration in list(self._mine.values()):
            await self.release(registration)

    async def claim(self, channel: Channel, agent: str | None, limit: int | None = None) -> Registration:
        """Register a subscriber; for a limited channel, take a free slot or raise."""
        sub_id = new_id()
        if limit is None:
            key = f"{channel.registry_prefix}.{sub_id}"
            info = SubscriberInfo(channel=str(channel), subscriber_id=sub_id, agent=agent)
            revision = await self._kv.put(key, info.model_dump_json().encode())
            return self._keep(Registration(key, info, revision))
        taken = {e.key.rsplit(".", 1)[1] for e in await _entries(self._js, self._kv, channel)}
        for slot in range(limit):
            if str(slot) in taken:
                continue
            key = f"{channel.registry_prefix}.{slot}"
            info = SubscriberInfo(channel=str(channel), subscriber_id=sub_id, agent=agent, slot=slot)
            try:
                revision = await self._kv.create(key, info.model_dump_json().encode())
            except KeyWrongLastSequenceError:
                continue  # another process took this slot a moment ago
            return self._keep(Registration(key, info, revision))
        raise TooManySubscribers(str(channel), limit)

    async def release(self, registration: Registration) -> None:
        self._mine.pop(registration.key, None)
        try:
            await self._kv.delete(registration.key, last=registration.revision)
        except Exception as exc:  # expired and re-taken, or NATS gone: nothing to undo
            log.debug("releasing %s: %s", registration.key, exc)

    def _keep(self, registration: Registration) -> Registration:
        self._mine[registration.key] = registration
        return registration

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            for registration in list(self._mine.values()):
                data = registration.info.model_dump_json().encode()
                try:
                    registration.revision = await self._kv.update(
                        registration.key, data, last=registration.revision
                    )
                except KeyWrongLastSequenceError:
                    log.warning("subscriber %s lost its registry entry", registration.key)
                except Exception as exc:
                    log.warning("renewing %s failed: %s", registration.key, exc)


async def _entries(
    js: JetStreamContext, kv: KeyValue, channel: Channel | None = None
) -> list[KeyValue.Entry]:
    """Current registry entries, for one channel or all (a listing must not
    miss a live subscriber: see :mod:`mesh.kv`)."""
    pattern = f"{channel.registry_prefix}.*" if channel else ">"
    return await current_entries(js, kv, CHANNELS_BUCKET, pattern)


async def list_channels(js: JetStreamContext) -> list[ChannelInfo]:
    """Every channel with live subscribers, a durable consumer group or a backlog, by name.

    A durable channel nobody has subscribed to yet has no consumer group, but
    its messages wait in ``AF_CHANNELS``: it is listed with that backlog.
    """
    kv = await ensure_channels(js)
    channels: dict[str, ChannelInfo] = {}

    def row_of(channel: Channel) -> ChannelInfo:
        return channels.setdefault(
            str(channel), ChannelInfo(name=str(channel), kind=channel.kind, subject=channel.subject)
        )

    for entry in await _entries(js, kv):
        info = SubscriberInfo.model_validate_json(entry.value or b"{}")
        row_of(Channel.parse(info.channel)).subscribers.append(info)
    for consumer in await consumers_of(js, CHANNELS_STREAM):
        subject = consumer.config.filter_subject
        found = channel_of_subject(subject) if subject else None
        if found is None:
            continue
        row = row_of(found)
        row.pending = consumer.num_pending
        row.ack_pending = consumer.num_ack_pending
        row.redelivered = consumer.num_redelivered
    stored = await js.stream_info(CHANNELS_STREAM, subjects_filter=f"{DURABLE_PREFIX}.>")
    for subject, count in (stored.state.subjects or {}).items():
        found = channel_of_subject(subject)
        if found is None or (row := row_of(found)).pending is not None:
            continue  # its consumer group counted it
        row.pending, row.ack_pending, row.redelivered = count, 0, 0
    for row in channels.values():
        row.subscribers.sort(key=lambda s: s.since)
    return [channels[name] for name in sorted(channels)]


async def tail(nc: Client, channel: Channel | str) -> AsyncGenerator[Envelope, None]:
    """Every message published to ``channel`` from now on, decoded; never consumes.

    Works for durable channels too: JetStream publishes are also delivered to
    plain subscribers of the subject, so tailing does not take work away from
    the channel's consumer group. Undecodable messages are logged and skipped.
    """
    parsed = Channel.of(channel)
    sub = await nc.subscribe(parsed.subject)
    await sync_with_server(nc)
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            try:
                yield decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            except DecodeError as exc:
                log.warning("tail %s: skipped a message: %s", parsed, exc)
    finally:
        with contextlib.suppress(ConnectionClosedError):  # closed: nothing left to undo
            await sub.unsubscribe()

"""The mesh API agents use to talk to each other: never directly, always here.

The method name tells the guarantee:

- :meth:`Mesh.send_durable` stores the message in JetStream before it returns
  (at least once, to exactly one subscriber of the channel, deduplicated by
  envelope id, retried and dead-lettered on failure);
- :meth:`Mesh.publish_event` / :meth:`Mesh.broadcast` are core NATS: at most
  once, fan-out to whoever listens now, no storage, no retry;
- :meth:`Mesh.request` waits for one reply, over either transport, and raises
  :class:`~mesh.errors.RequestTimeout` (or :class:`NoResponders` at once) when
  none comes.

Every message carries ``Content-Type``, ``traceparent`` and
``AF-Correlation-Id`` headers. Inside a handler, sends inherit the handled
envelope's correlation id (and take its id as causation id) and trace.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh import names
from mesh.channels.acks import MESSAGES, AckTracker
from mesh.channels.encoder import Encoder, Outgoing, fast_id
from mesh.channels.errors import InvalidChannelName, NoResponders, RemoteError
from mesh.channels.registry import (
    BROADCAST,
    Channel,
    SubscriberRegistry,
    ensure_channels,
)
from mesh.channels.schemas import SchemaRegistry
from mesh.channels.subscriptions import (
    DurableOptions,
    DurableSubscription,
    EphemeralSubscription,
    Handler,
)
from mesh.envelope import CONTENT_TYPE, JSON, ChannelType, Envelope, MessageType, decode
from mesh.errors import DecodeError, MeshError, RequestTimeout
from mesh.wire import protocol
from mesh.wire.connection import jetstream
from mesh.wire.delivery import InlineDelivery

__all__ = ["MAX_MESSAGE_SIZE", "Mesh", "MeshConfig", "Subscription", "rpc_channel"]

MAX_MESSAGE_SIZE: Final = 1_000_000  # encoded envelope; headers fit under NATS's 1 MiB
_SUBJECT_BREAKS: Final = re.compile(r"[ \t\r\n]")
ERROR_TYPE: Final = "error"
_REPLIES: Final = Channel(ChannelType.EPHEMERAL, "reply")  # replies go to an inbox, core NATS

Subscription = DurableSubscription | EphemeralSubscription


def rpc_channel(agent: str) -> Channel:
    """The durable channel that carries durable requests for ``agent``."""
    return Channel(ChannelType.DURABLE, f"rpc.{agent}")


@dataclass(frozen=True, slots=True)
class MeshConfig:
    max_message_size: int = MAX_MESSAGE_SIZE
    codecs: Mapping[str, str] = field(default_factory=dict)  # "durable:x" -> content type
    default_codec: str = JSON
    max_subscribers: int = 100  # per ephemeral channel, unless channel_limits says otherwise
    channel_limits: Mapping[str, int] = field(default_factory=dict)


class Mesh:
    """One agent's (or process's) door to the mesh, over one multiplexed connection.

    Owns its subscriptions, its reply inbox and its registry heartbeat:
    ``start()``/``stop()`` or ``async with``.
    """

    def __init__(
        self,
        nc: Client,
        *,
        agent: str | None = None,
        schemas: SchemaRegistry | None = None,
        config: MeshConfig | None = None,
        tracker: AckTracker | None = None,
    ) -> None:
        self.nc = nc
        self.agent = agent
        self.schemas = schemas or SchemaRegistry()
        self.config = config or MeshConfig()
        self.tracker = tracker or AckTracker()
        self._js: JetStreamContext | None = None
        self._registry: SubscriberRegistry | None = None
        self._subs: set[Subscription] = set()
        self._inbox = ""
        self._replies: InlineDelivery | None = None
        self._waiting: dict[str, tuple[asyncio.Future[Msg], str]] = {}
        self._rpc_targets: dict[tuple[str, bool], tuple[Channel, str, str]] = {}
        self._sent = {kind: MESSAGES.labels(kind.value, "sent") for kind in ChannelType}
        self._sent_ephemeral = self._sent[ChannelType.EPHEMERAL]
        limit = self.config.max_message_size
        if nc.max_payload:  # leave room for headers under the server's max_payload
            limit = min(limit, nc.max_payload - 8192)
        self.encoder = Encoder(agent, self.schemas, self.config.codecs, self.config.default_codec, limit)

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("Mesh.start() has not been called")
        return self._js

    async def start(self) -> None:
        self._js = await jetstream(self.nc)
        self._registry = SubscriberRegistry(self._js, await ensure_channels(self._js))
        await self._registry.start()
        self._inbox = self.nc.new_inbox()
        # Replies resolve their request's future right in the connection's reader.
        replies = InlineDelivery(
            self.nc, f"{self._inbox}.*", self._on_reply, f"{self.agent or 'mesh'} replies"
        )
        await replies.start()
        self._replies = replies

    async def stop(self) -> None:
        for sub in list(self._subs):
            await self.unsubscribe(sub)
        for future, agent in self._waiting.values():
            if not future.done():
                future.set_exception(MeshError(f"mesh stopped while waiting for {agent!r}"))
        self._waiting.clear()
        if self._replies is not None:
            replies, self._replies = self._replies, None
            await replies.stop()
        if self._registry is not None:
            await self._registry.stop()
        if self._js is not None:
            await protocol.close_publish_async_inbox(self.nc, self._js)

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- sending -----------------------------------------------------------------------

    def envelope(self, target: Channel | str, payload: Any, **fields: Any) -> Envelope:
        """A validated envelope from this agent (see :meth:`Encoder.envelope`)."""
        return self.encoder.envelope(target, payload, **fields)

    async def send_durable(
        self,
        channel: Channel | str,
        payload: Any,
        *,
        type: str = "message",
        message_type: MessageType = MessageType.COMMAND,
        **fields: Any,
    ) -> int:
        """Store a message on a durable channel; returns its stream sequence.

        Returns only after JetStream has stored it (at least once from here on).
        Re-sending the same ``id`` within two minutes stores it once. Raises
        :class:`PayloadTooLarge` or :class:`InvalidPayload` before publishing.
        """
        parsed = _durable(channel)
        out = self.encoder.encode(parsed, payload, type=type, message_type=message_type, **fields)
        ack = await self.js.publish(parsed.subject, out.data, headers=out.headers)
        self._sent[ChannelType.DURABLE].inc()
        return int(ack.seq)

    async def send_durable_many(
        self,
        channel: Channel | str,
        payloads: Iterable[Any],
        *,
        type: str = "message",
        **fields: Any,
    ) -> list[int]:
        """Like :meth:`send_durable` for many messages, pipelined: one round trip
        of latency for the whole batch instead of one per message."""
        parsed = _durable(channel)
        futures = []
        encode, kind = self.encoder.encode, MessageType.COMMAND
        publish, subject = self.js.publish_async, parsed.subject
        for payload in payloads:
            if fields:
                out = encode(parsed, payload, type=type, message_type=kind, **fields)
            else:  # no keyword dict per message
                out = encode(parsed, payload, type=type, message_type=kind)
            futures.append(await publish(subject, out.data, headers=out.headers))
        acks = await asyncio.gather(*futures)
        self._sent[ChannelType.DURABLE].inc(len(acks))
        return [int(a.seq) for a in acks]

    async def publish_event(
        self,
        channel: Channel | str,
        payload: Any,
        *,
        type: str = "event",
        message_type: MessageType = MessageType.EVENT,
        **fields: Any,
    ) -> None:
        """Fan a message out on an ephemeral channel: best effort, nothing stored.

        Subscribers present now receive it once, in publish order; anyone
        absent or too slow misses it. Raises before publishing when too large
        or invalid.
        """
        parsed = Channel.of(channel)
        if parsed.durable or parsed.is_pattern:
            raise InvalidChannelName(
                f"publish_event needs a concrete ephemeral channel, "
                f"not {parsed}; use send_durable for durable ones"
            )
        if fields:
            out = self.encoder.encode(parsed, payload, type=type, message_type=message_type, **fields)
        else:  # the common call, without building a keyword dict per message
            out = self.encoder.encode(parsed, payload, type=type, message_type=message_type)
        await protocol.publish(self.nc, parsed.subject, out.data, headers=out.header_block)
        self._sent_ephemeral.inc()

    async def broadcast(self, payload: Any, *, type: str = "broadcast", **fields: Any) -> None:
        """Tell every agent subscribed to ``ephemeral:broadcast`` (best effort)."""
        await self.publish_event(BROADCAST, payload, type=type, **fields)

    # -- receiving ---------------------------------------------------------------------

    async def subscribe(
        self, channel: Channel | str, handler: Handler, *, options: DurableOptions | None = None
    ) -> Subscription:
        """Call ``handler`` for each message on ``channel`` until unsubscribed.

        Durable: the subscriber joins the channel's consumer group (each message
        goes to one member). Ephemeral: every subscriber gets every message;
        raises :class:`TooManySubscribers` past the channel's limit.
        """
        parsed = Channel.of(channel)
        assert self._registry is not None, "Mesh.start() has not been called"
        sub: Subscription
        if parsed.durable:
            registration = await self._registry.claim(parsed, self.agent)
            sub = DurableSubscription(
                self.nc,
                self.js,
                parsed,
                handler,
                self.schemas,
                self.tracker,
                options or DurableOptions(),
                registry=self._registry,
                registration=registration,
            )
        else:
            limit = self.config.channel_limits.get(str(parsed), self.config.max_subscribers)
            registration = await self._registry.claim(parsed, self.agent, limit)
            sub = EphemeralSubscription(
                self.nc,
                parsed,
                handler,
                self.schemas,
                registry=self._registry,
                registration=registration,
            )
        try:
            await sub.start()
        except BaseException:
            await sub.stop()
            raise
        self._subs.add(sub)
        return sub

    async def unsubscribe(self, sub: Subscription) -> None:
        """Stop a subscription: a durable one finishes its current message first."""
        self._subs.discard(sub)
        await sub.stop()

    # -- request / reply ---------------------------------------------------------------

    async def serve(
        self,
        agent: str,
        handler: Handler,
        *,
        durable: bool = False,
        options: DurableOptions | None = None,
    ) -> Subscription:
        """Answer requests addressed to ``agent``: the handler's return value is the reply.

        Instances serving the same agent share the load. A handler that raises
        sends an error reply (the caller gets :class:`RemoteError`); durable
        requests are not retried, the caller decides.
        """

        async def answer(request: Envelope) -> None:
            if not request.reply_to:
                await handler(request)  # a one-way message on the request subject
                return
            try:
                out = self._reply(f"{request.type}.reply", await handler(request))
            except Exception as exc:
                out = self._reply(ERROR_TYPE, {"error_type": type(exc).__name__, "error": str(exc)})
            await protocol.publish(
                self.nc, _checked_subject(request.reply_to), out.data, headers=out.header_block
            )

        if durable:
            return await self.subscribe(rpc_channel(agent), answer, options=options)
        assert self._registry is not None, "Mesh.start() has not been called"
        channel = Channel(ChannelType.EPHEMERAL, f"rpc.{agent}")
        registration = await self._registry.claim(channel, self.agent)  # listed, not limited
        sub = EphemeralSubscription(
            self.nc, channel, answer, self.schemas, subject=names.rpc_subject(agent), queue=agent,
            registry=self._registry, registration=registration,
        )  # fmt: skip
        try:
            await sub.start()
        except BaseException:
            await sub.stop()
            raise
        self._subs.add(sub)
        return sub

    def _reply(self, type_name: str, payload: Any) -> Outgoing:
        kind = MessageType.RESPONSE
        try:
            return self.encoder.encode(_REPLIES, payload, type=type_name, message_type=kind)
        except MeshError as exc:  # too large, invalid, unserializable: the caller hears why
            error = {"error_type": type(exc).__name__, "error": str(exc)}
            return self.encoder.encode(_REPLIES, error, type=ERROR_TYPE, message_type=kind)

    async def request(
        self,
        agent: str,
        payload: Any,
        timeout: float = 5.0,
        *,
        durable: bool = False,
        type: str = "request",
        **fields: Any,
    ) -> Envelope:
        """Send a request to ``agent`` and return its reply envelope.

        Ephemeral (default): core NATS to ``af.rpc.<agent>``; with nobody
        serving it raises :class:`NoResponders` at once. Durable: stored on
        ``durable:rpc.<agent>`` with a TTL of ``timeout`` (a late server skips
        it). Either way :class:`RequestTimeout` after ``timeout`` seconds, and
        nothing is left subscribed: replies share one inbox per ``Mesh``.
        """
        token = fast_id()
        reply_to = f"{self._inbox}.{token}"
        channel, subject, tracked = self._rpc_target(agent, durable)
        if durable:
            fields.setdefault("ttl_s", max(1.0, timeout))
        out = self.encoder.encode(
            channel, payload, type=type, message_type=MessageType.REQUEST, reply_to=reply_to,
            **fields,
        )  # fmt: skip
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (future, agent)
        pending = self.tracker.begin(tracked, out.id, timeout)
        outcome = "timeout"
        try:
            async with asyncio.timeout(timeout):
                if durable:
                    await self.js.publish(subject, out.data, headers=out.headers)
                else:
                    await protocol.publish(self.nc, subject, out.data, reply_to, out.header_block)
                self._sent[channel.kind].inc()
                msg = await future
            reply = decode(msg.data, msg.headers.get(CONTENT_TYPE) if msg.headers else None)
            outcome = "ok"
        except NoResponders:
            outcome = "no_responders"
            raise
        except TimeoutError:
            raise RequestTimeout(
                f"no reply from agent {agent!r} within {timeout}s "
                f"(request {out.id}, correlation {out.correlation_id})"
            ) from None
        except DecodeError:
            outcome = "bad_reply"
            raise
        finally:
            self._waiting.pop(token, None)
            if outcome != "ok":
                self.tracker.settle(pending, outcome)
        if reply.type == ERROR_TYPE and isinstance(reply.payload, dict):
            self.tracker.settle(pending, "remote_error")
            raise RemoteError(agent, str(reply.payload.get("error_type")), str(reply.payload.get("error")))
        self.tracker.settle(pending, "ok")
        return reply

    def _rpc_target(self, agent: str, durable: bool) -> tuple[Channel, str, str]:
        """Channel, subject and tracker name of requests to ``agent``, built once per agent."""
        target = self._rpc_targets.get((agent, durable))
        if target is None:
            if durable:
                channel = rpc_channel(agent)
                target = (channel, channel.subject, f"rpc:{agent}")
            else:
                channel = Channel(ChannelType.EPHEMERAL, f"rpc.{agent}")
                target = (channel, _checked_subject(names.rpc_subject(agent)), f"rpc:{agent}")
            if len(self._rpc_targets) < 4096:
                self._rpc_targets[(agent, durable)] = target
        return target

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._inbox) + 1 :]
        waiting = self._waiting.get(token)
        if waiting is None or waiting[0].done():
            return  # a reply that arrived after its request timed out
        future, agent = waiting
        if msg.headers and msg.headers.get("Status") == "503" and not msg.data:
            future.set_exception(NoResponders(agent))
        else:
            future.set_result(msg)


def _checked_subject(subject: str) -> str:
    """Refuse what ``Client.publish`` refuses (``mesh.wire.protocol.publish`` writes the
    subject as given): an empty subject, or whitespace that would end the command."""
    if not subject or _SUBJECT_BREAKS.search(subject):
        raise nats.errors.BadSubjectError
    return subject


def _durable(channel: Channel | str) -> Channel:
    parsed = Channel.of(channel)
    if not parsed.durable:
        raise InvalidChannelName(
            f"send_durable needs a durable channel, not {parsed}; use publish_event for ephemeral ones"
        )
    return parsed

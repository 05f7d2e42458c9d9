"""Receiving from channels: the durable consumer loop and ephemeral callbacks.

Both kinds check every message the same way before a handler sees it: the
envelope must decode (known schema version, valid fields), must not have
outlived its ``metadata.ttl_s``, and its payload must match the schema
registered for its type. A message that fails is *rejected and counted*
(``af_mesh_rejected_total``), never passed on, and never crashes the
subscriber. Handlers run inside the sender's trace context, with
:data:`current_envelope` set so that anything they send is correlated.

Durable guarantee: at least once. A handler that returns acks the message; one
that raises (or outlives ``ack_timeout_s``) naks it with a backoff delay, and
after ``max_attempts`` the message is dead-lettered to ``AF_DLQ`` with every
attempt's error, then terminated. A subscriber that dies mid-message loses
nothing: the server redelivers after ``ack_wait_s``, and a delivery past
``max_attempts`` (every earlier attempt timed out or crashed) is
dead-lettered without running the handler again. Handlers must therefore be
idempotent by ``envelope.id``.

Ephemeral guarantee: at most once, to the subscribers present at publish
time, in publish order per subject and subscriber. Ephemeral subscriptions
(and a ``Mesh``'s reply inbox) start their handler right in the connection's
reader (:class:`InlineDelivery`); a handler that waits holds later messages
back, it never reorders them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from mesh import trace
from mesh.channels.acks import MESSAGES, AckTracker, PendingAck, count_rejected
from mesh.channels.errors import InvalidPayload, RejectMessage
from mesh.channels.registry import (
    CHANNELS_STREAM,
    Channel,
    Registration,
    SubscriberRegistry,
)
from mesh.channels.schemas import SchemaRegistry
from mesh.deadletters import AttemptError, DeadLetter, dead_letter
from mesh.envelope import CONTENT_TYPE, Envelope, decode
from mesh.errors import DecodeError, UnknownSchemaVersion
from mesh.wire import protocol
from mesh.wire.delivery import Deadlines, InlineDelivery
from mesh.wire.protocol import sync_with_server
from mesh.wire.stream import PullStream

__all__ = [
    "DurableOptions",
    "DurableSubscription",
    "EphemeralSubscription",
    "Handler",
    "current_envelope",
]

log = logging.getLogger(__name__)

Handler = Callable[[Envelope], Awaitable[Any]]

current_envelope: contextvars.ContextVar[Envelope | None] = contextvars.ContextVar(
    "af_current_envelope", default=None
)
"""The envelope being handled in this task: sends inherit its correlation id."""

_MAX_REMEMBERED_ERRORS: Final = 10_000


@dataclass(frozen=True, slots=True)
class DurableOptions:
    """How a durable channel's consumer group treats its messages.

    The first subscriber of a channel creates its consumer group with these
    settings; later subscribers join it as it is.
    """

    max_attempts: int = 5
    ack_timeout_s: float = 30.0  # a handler running longer is cancelled and the message naked
    ack_wait_s: float | None = None  # server redelivery after a crash; default ack_timeout + 2
    backoff_s: tuple[float, ...] = (0.1, 0.5, 2.0, 5.0)  # nak delay per failed attempt
    concurrency: int = 1  # >1 gives up ordering for throughput
    batch: int = 32  # messages requested ahead; keep batch x handler time < ack_wait
    poll_s: float = 5.0  # lifetime of one pull request on the server

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.concurrency < 1 or self.batch < 1:
            raise ValueError("max_attempts, concurrency and batch must be at least 1")
        if self.ack_timeout_s <= 0 or self.poll_s <= 0:
            raise ValueError("ack_timeout_s and poll_s must be positive")

    def nak_delay(self, attempt: int) -> float:
        return self.backoff_s[min(attempt, len(self.backoff_s)) - 1] if self.backoff_s else 0.0


class Rejected(Exception):
    def __init__(self, reason: str, detail: str, tenant: str = "default") -> None:
        super().__init__(detail)
        self.reason = reason
        self.tenant = tenant


def admit(msg: Msg, channel: str, schemas: SchemaRegistry) -> Envelope:
    """Decode and check one message; raise :class:`Rejected` (already counted)."""
    headers = msg.headers
    tenant = "default"
    try:
        envelope = decode(msg.data, headers.get(CONTENT_TYPE) if headers else None)
        ttl = envelope.metadata.ttl_s
        if ttl is not None and envelope.created_at + timedelta(seconds=ttl) < datetime.now(UTC):
            raise Rejected("expired", f"message {envelope.id} expired after {ttl}s")
        tenant = envelope.metadata.tenant
        payload = schemas.validate(envelope.type, envelope.payload)
        if payload is not envelope.payload:  # parsed into its registered model
            envelope.payload = payload
    except UnknownSchemaVersion as exc:
        count_rejected(channel, "unknown_schema_version")
        raise Rejected("unknown_schema_version", str(exc)) from exc
    except InvalidPayload as exc:
        count_rejected(channel, "invalid_payload")
        raise Rejected("invalid_payload", str(exc), tenant) from exc
    except DecodeError as exc:
        count_rejected(channel, "decode_error")
        raise Rejected("decode_error", str(exc)) from exc
    except Rejected as exc:
        count_rejected(channel, exc.reason)
        raise
    return envelope


async def run_handler(
    handler: Handler, envelope: Envelope, headers: dict[str, str] | None, span_name: str
) -> Any:
    """Call ``handler`` inside the message's trace, with :data:`current_envelope` set."""
    token = current_envelope.set(envelope)
    entered = trace.enter(headers, span_name)
    try:
        return await handler(envelope)
    finally:
        trace.leave(entered)
        current_envelope.reset(token)


class EphemeralSubscription:
    """A core NATS subscription on an ephemeral channel (or an RPC subject)."""

    def __init__(
        self,
        nc: Client,
        channel: Channel,
        handler: Handler,
        schemas: SchemaRegistry,
        *,
        subject: str | None = None,
        queue: str = "",
        registry: SubscriberRegistry | None = None,
        registration: Registration | None = None,
        pending_msgs_limit: int = 65_536,
    ) -> None:
        self.channel = channel
        self._nc = nc
        self._handler = handler
        self._schemas = schemas
        self._subject = subject or channel.subject
        self._registry = registry
        self._registration = registration
        self._name = str(channel)
        self._received = MESSAGES.labels("EPHEMERAL", "received")
        self._span = f"{self._name} receive"
        self._delivery = InlineDelivery(
            nc, self._subject, self._on_msg, self._name, queue=queue, pending_msgs_limit=pending_msgs_limit
        )

    async def start(self) -> None:
        await self._delivery.start()
        await sync_with_server(self._nc)  # the server knows the interest before start() returns

    async def stop(self) -> None:
        await self._delivery.stop()
        if self._registry is not None and self._registration is not None:
            await self._registry.release(self._registration)
            self._registration = None

    async def _on_msg(self, msg: Msg) -> None:
        self._received.inc()
        try:
            envelope = admit(msg, self._name, self._schemas)
        except Rejected as exc:
            log.warning("%s: rejected a message (%s): %s", self._name, exc.reason, exc)
            return
        # run_handler, inlined: this is the per-message path of every ephemeral channel.
        token = current_envelope.set(envelope)
        entered = trace.enter(msg.headers, self._span)
        try:
            await self._handler(envelope)
        except Exception:
            log.exception("%s: handler failed on message %s", self._name, envelope.id)
        finally:
            trace.leave(entered)
            current_envelope.reset(token)


class DurableSubscription:
    """One member of a durable channel's consumer group: a pull loop over ``AF_CHANNELS``."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        channel: Channel,
        handler: Handler,
        schemas: SchemaRegistry,
        tracker: AckTracker,
        options: DurableOptions,
        *,
        registry: SubscriberRegistry | None = None,
        registration: Registration | None = None,
    ) -> None:
        self.channel = channel
        self.options = options
        self._nc = nc
        self._js = js
        self._handler = handler
        self._schemas = schemas
        self._tracker = tracker
        self._registry = registry
        self._registration = registration
        self._name = str(channel)
        self._errors: dict[int, list[AttemptError]] = {}
        self._received = MESSAGES.labels("DURABLE", "received")
        self._span = f"{self._name} process"
        self._pull: PullStream | None = None
        self._deadlines = Deadlines(options.ack_timeout_s)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        opts = self.options
        ack_wait = opts.ack_wait_s if opts.ack_wait_s is not None else opts.ack_timeout_s + 2.0
        consumer = self.channel.consumer
        try:
            await self._js.consumer_info(CHANNELS_STREAM, consumer)
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=consumer,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ack_wait,
                max_deliver=-1,  # attempts are counted here: a crash loop still ends in the DLQ
                filter_subject=self.channel.subject,
                max_ack_pending=max(1000, opts.batch * opts.concurrency * 4),
            )
            await self._js.add_consumer(CHANNELS_STREAM, config)
        self._pull = PullStream(
            self._nc, CHANNELS_STREAM, consumer, self._on_msg, batch=opts.batch,
            expires_s=opts.poll_s, api_prefix=protocol.api_prefix(self._js),
        )  # fmt: skip
        await self._pull.start()

    async def stop(self) -> None:
        """Finish the messages in hand, hand back received-but-unstarted ones, then leave."""
        self._stopping = True
        if self._pull is not None:
            pull, self._pull = self._pull, None
            await pull.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._deadlines.close()
        if self._registry is not None and self._registration is not None:
            await self._registry.release(self._registration)
            self._registration = None

    async def _on_msg(self, msg: Msg) -> None:
        if self._stopping:
            with contextlib.suppress(Exception):
                await msg.nak()  # back to the group at once, not after ack_wait
            return
        if self.options.concurrency == 1:
            await self._process(msg)
            return
        await self._slots.acquire()  # backpressure: the pull stream waits for a free slot
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: processing failed", self._name, exc_info=task.exception())

    async def _process(self, msg: Msg) -> None:
        self._received.inc()
        attempt, seq = protocol.delivery_of(msg)
        opts = self.options
        pending = self._tracker.begin(self._name, str(seq), opts.ack_timeout_s, attempt)
        if attempt > opts.max_attempts:
            # Every earlier attempt crashed or timed out without a verdict.
            self._error(
                seq,
                attempt - 1,
                "no ack before ack_wait (subscriber crashed or hung)",
                "AckTimeout",
            )
            await self._dead(msg, seq, f"no ack after {opts.max_attempts} attempts")
            self._tracker.settle(pending, "dead_letter")
            return
        try:
            envelope = admit(msg, self._name, self._schemas)
        except Rejected as exc:
            if exc.reason == "expired":
                await msg.term()
                self._tracker.settle(pending, "expired")
                return
            self._error(seq, attempt, str(exc), exc.reason, retryable=False)
            await self._dead(msg, seq, f"rejected: {exc.reason}", exc.tenant)
            self._tracker.settle(pending, "dead_letter")
            return
        deadlines, key = self._deadlines, id(msg)
        deadlines.start(key)
        try:
            try:
                await run_handler(self._handler, envelope, msg.headers, self._span)
            finally:
                deadlines.finish(key)
        except asyncio.CancelledError:
            if not deadlines.expired(key):
                raise
            self._error(seq, attempt, f"handler exceeded {opts.ack_timeout_s}s", "TimeoutError")
            await self._settle_failed(msg, seq, attempt, envelope, pending, timed_out=True)
            return
        except RejectMessage as exc:
            self._error(seq, attempt, str(exc), type(exc).__name__, retryable=False)
            await self._dead(msg, seq, f"rejected by handler: {exc}", envelope.metadata.tenant)
            self._tracker.settle(pending, "dead_letter")
            return
        except Exception as exc:
            self._error(seq, attempt, str(exc) or repr(exc), type(exc).__name__)
            await self._settle_failed(msg, seq, attempt, envelope, pending, timed_out=False)
            return
        await msg.ack()
        self._errors.pop(seq, None)
        self._tracker.settle(pending, "ack")

    async def _settle_failed(
        self, msg: Msg, seq: int, attempt: int, envelope: Envelope, pending: PendingAck, *, timed_out: bool
    ) -> None:
        """A failed attempt: nak with backoff, or dead-letter after the last one."""
        if attempt >= self.options.max_attempts:
            await self._dead(msg, seq, f"failed {attempt} attempts", envelope.metadata.tenant)
            self._tracker.settle(pending, "dead_letter")
        else:
            await msg.nak(delay=self.options.nak_delay(attempt))
            self._tracker.settle(pending, "timeout" if timed_out else "nak")

    def _error(self, seq: int, attempt: int, error: str, error_type: str, retryable: bool = True) -> None:
        if len(self._errors) >= _MAX_REMEMBERED_ERRORS:
            self._errors.pop(next(iter(self._errors)))
        self._errors.setdefault(seq, []).append(
            AttemptError(
                attempt=max(1, attempt),
                error=error[:8192],
                error_type=error_type,
                retryable=retryable,
            )
        )

    async def _dead(self, msg: Msg, seq: int, reason: str, tenant: str = "default") -> None:
        """Dead-letter first, then terminate: a crash in between leaves a duplicate, not a loss."""
        headers = dict(msg.headers or {})
        entry = DeadLetter.of(
            payload=msg.data,
            origin="channels",
            name=self.channel.name,
            subject=msg.subject,
            headers=headers,
            errors=self._errors.pop(seq, []),
            reason=reason,
            tenant=tenant,
        )
        started = time.monotonic()
        await dead_letter(self._js, entry, dedup_id=f"channels-{seq}")
        await msg.term()
        log.warning(
            "%s: message seq %d dead-lettered (%s) in %.1f ms",
            self._name,
            seq,
            reason,
            (time.monotonic() - started) * 1000,
        )

"""The Scheduler service: relays cron firings and matching events into the task queue.

Run it in any number of replicas (``start()``/``stop()``); see docs/scheduler.md.

* **Cron**: nats-server fires each tick once onto ``af.schedules.fire.<name>``
  (one server-side schedule per subject). All replicas pull from one shared
  durable consumer ``schedule-relay``, so each firing goes to one replica; it
  is enqueued with the idempotency key ``schedule:<name>:<stream seq>`` and
  then acked, so a redelivery (crash before the ack) finds the key and
  yields no second task.
* **Event triggers**: one shared durable consumer ``trigger-<name>`` per
  trigger on ``AF_EVENTS``; each event is enqueued with the key
  ``trigger:<name>:<event stream seq>`` and then acked.
* **Missed ticks**: after nats-server downtime the server fires once to catch
  up; after scheduler downtime the firings that piled up are coalesced
  (only the newest one of a schedule is enqueued). So a schedule fires at
  most once to catch up, then continues on its schedule.
* Definitions added or removed at runtime are picked up within ``refresh_s``.
* ``stop(timeout)`` returns within ``timeout`` even if a cancel is lost below
  us (:mod:`mesh.stopping`); what still runs then is left behind, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError
from pydantic import ValidationError

from mesh import names
from mesh.envelope import CONTENT_TYPE, decode
from mesh.errors import DecodeError
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.schedules.definitions import (
    CronSchedule,
    Definition,
    EventTrigger,
    ScheduleExists,
    ScheduleInvalid,
    ScheduleNotFound,
    add_definition,
    ensure_trigger_consumer,
    get_definition,
    list_definitions,
    register_cron,
    remove_definition,
)
from mesh.stopping import cancel_within
from mesh.wire import protocol
from mesh.wire.connection import consumers_of
from mesh.wire.consumer import ConsumerLoop, each

__all__ = [
    "CronSchedule",
    "Definition",
    "EventTrigger",
    "ScheduleExists",
    "ScheduleInvalid",
    "ScheduleNotFound",
    "Scheduler",
    "add_definition",
    "event_input",
    "get_definition",
    "list_definitions",
    "remove_definition",
]

log = logging.getLogger(__name__)

_KV_STREAM: Final = names.kv_stream(names.BUCKET_SCHEDULES)
_RETRY_DELAY_S: Final = 2.0
_TRIGGER_STOP_S: Final = 5.0  # for the event in hand, past the pull's settling, when a trigger changes


def event_input(trigger: EventTrigger, msg: Msg) -> dict[str, Any]:
    """The task input for an event: ``{**trigger.input, trigger.event_field: event}``."""
    if trigger.event_field is None:
        return dict(trigger.input)
    event: dict[str, Any] = {"subject": msg.subject, "seq": msg.metadata.sequence.stream}
    try:
        env = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
        event.update(id=env.id, type=env.type, payload=env.payload,
                     created_at=env.created_at.isoformat())  # fmt: skip
    except DecodeError:  # not an envelope: pass the body as JSON, or as text
        try:
            event["payload"] = json.loads(msg.data)
        except ValueError:
            event["payload"] = msg.data.decode(errors="replace")
    return {**trigger.input, trigger.event_field: event}


class Scheduler:
    """Relay firings and events into ``queue``. Safe to run in several replicas."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        queue: TaskQueue,
        *,
        refresh_s: float = 1.0,
        reconcile_s: float = 30.0,
        idle_s: float = 2.0,
    ) -> None:
        self.nc, self.js, self.queue = nc, js, queue
        self.refresh_s, self.reconcile_s, self.idle_s = refresh_s, reconcile_s, idle_s
        self.stats: Counter[str] = Counter()  # enqueued, duplicate, coalesced, dropped
        self._relay: ConsumerLoop | None = None
        self._triggers: dict[str, tuple[EventTrigger, ConsumerLoop]] = {}
        self._refresher: asyncio.Task[None] | None = None
        self._kv_seq = -1
        self._reconciled_at = 0.0

    def _loop(self, stream: str, consumer: str, handle: Callable[[Msg], Awaitable[None]]) -> ConsumerLoop:
        """A consumer loop handing each message to ``handle`` (which acks it); one
        that raises is nak'ed and retried after a delay."""
        return ConsumerLoop(
            self.nc, stream, consumer, each(handle, _RETRY_DELAY_S), batch=16, idle_s=self.idle_s,
            retry_delay_s=_RETRY_DELAY_S, api_prefix=protocol.api_prefix(self.js),
        )  # fmt: skip

    async def start(self) -> None:
        config = ConsumerConfig(
            durable_name=names.CONSUMER_SCHEDULE_RELAY, filter_subject=names.schedule_fire_subject("*"),
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0,
            max_ack_pending=1000, description="scheduler replicas relay firings to AF_TASKS",
        )  # fmt: skip
        try:
            await self.js.add_consumer(names.STREAM_SCHEDULES, config)
        except APIError as exc:  # exists with another config (an older build): use it
            log.warning("using the existing %s consumer: %s", names.CONSUMER_SCHEDULE_RELAY, exc)
            await self.js.consumer_info(names.STREAM_SCHEDULES, names.CONSUMER_SCHEDULE_RELAY)
        self._relay = self._loop(names.STREAM_SCHEDULES, names.CONSUMER_SCHEDULE_RELAY, self._on_firing)
        await self._relay.start()
        await self.refresh()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="scheduler-refresh")

    async def stop(self, timeout: float = 8.0) -> None:
        """Stop within ``timeout`` s (``up`` abandons a step after 10): the
        definitions refresh first, then the consumer loops, each finishing the
        firing or event in hand if there is time and handing back the rest."""
        deadline = asyncio.get_running_loop().time() + timeout
        if self._refresher is not None:
            if await cancel_within([self._refresher], deadline):
                log.warning("scheduler: definitions refresh still running at the stop's deadline; abandoned")
            self._refresher = None
        loops = [loop for _, loop in self._triggers.values()]
        if self._relay is not None:
            loops.append(self._relay)
        await asyncio.gather(*(loop.stop(deadline) for loop in loops))
        self._triggers.clear()
        self._relay = None

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def triggers(self) -> set[str]:
        """Names of the triggers this replica consumes."""
        return set(self._triggers)

    # ---- relaying ---------------------------------------------------------

    async def _enqueue(self, spec: TaskSpec, msg: Msg) -> None:
        queued = await self.queue.enqueue(spec)
        self.stats["duplicate" if queued.duplicate else "enqueued"] += 1
        await msg.ack()

    async def _on_firing(self, msg: Msg) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        seq = msg.metadata.sequence.stream
        try:
            sched = CronSchedule.model_validate_json(msg.data)
        except ValidationError as exc:
            log.error("firing %s of %s has a bad body, dropped: %s", seq, name, exc)
            self.stats["dropped"] += 1
            await msg.term()
            return
        if await get_definition(self.js, name, missing_ok=True) is None:
            self.stats["dropped"] += 1  # removed after this firing was stored
            await msg.ack()
            return
        try:
            last = await self.js.get_last_msg(names.STREAM_SCHEDULES, msg.subject)
        except NotFoundError:  # purged by a remove since it was delivered
            self.stats["dropped"] += 1
            await msg.ack()
            return
        if last.seq is not None and last.seq > seq:
            self.stats["coalesced"] += 1  # a newer firing of this schedule is waiting
            await msg.ack()
            return
        spec = TaskSpec(
            agent=sched.agent, input=sched.input, tenant=sched.tenant, priority=sched.priority,
            ttl_s=sched.ttl_s, idempotency_key=f"schedule:{name}:{seq}",
            source=f"schedule:{name}",
        )  # fmt: skip
        await self._enqueue(spec, msg)

    async def _on_event(self, trigger: EventTrigger, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        spec = TaskSpec(
            agent=trigger.agent, input=event_input(trigger, msg), tenant=trigger.tenant,
            priority=trigger.priority, ttl_s=trigger.ttl_s,
            idempotency_key=f"trigger:{trigger.name}:{seq}", source=f"trigger:{trigger.name}",
        )  # fmt: skip
        await self._enqueue(spec, msg)

    # ---- following the definitions -----------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("scheduler refresh failed: %s", exc)

    async def refresh(self, force: bool = False) -> None:
        """Re-read the definitions if the bucket changed (or every ``reconcile_s``)."""
        info = await self.js.stream_info(_KV_STREAM)
        due = time.monotonic() - self._reconciled_at >= self.reconcile_s
        if not force and not due and info.state.last_seq == self._kv_seq:
            return
        # What exists on the server is read *before* the definitions, so a
        # definition being added or removed right now is never undone here.
        active_crons = await self._active_crons()
        active_triggers = await self._active_trigger_consumers()
        definitions = {d.name: d for d in await list_definitions(self.js)}
        self._kv_seq, self._reconciled_at = info.state.last_seq, time.monotonic()
        for name, d in definitions.items():
            if isinstance(d, CronSchedule) and name not in active_crons:
                log.info("re-registering schedule %s (missing on the server)", name)
                await register_cron(self.js, d)
        for name in active_crons - definitions.keys():
            await self.js.purge_stream(names.STREAM_SCHEDULES, subject=names.schedule_def_subject(name))
        for name in active_triggers - definitions.keys():
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(names.STREAM_EVENTS, names.trigger_consumer(name))
        await self._sync_triggers({n: d for n, d in definitions.items() if isinstance(d, EventTrigger)})

    async def _active_crons(self) -> set[str]:
        prefix = names.schedule_def_subject("")
        info = await self.js.stream_info(names.STREAM_SCHEDULES, subjects_filter=prefix + ">")
        return {s[len(prefix) :] for s in (info.state.subjects or {})}

    async def _active_trigger_consumers(self) -> set[str]:
        prefix = names.trigger_consumer("")
        found = await consumers_of(self.js, names.STREAM_EVENTS)
        return {c.name[len(prefix) :] for c in found if c.name.startswith(prefix)}

    async def _sync_triggers(self, wanted: dict[str, EventTrigger]) -> None:
        for name in list(self._triggers):
            current, loop = self._triggers[name]
            if wanted.get(name) != current:
                del self._triggers[name]
                await loop.stop(asyncio.get_running_loop().time() + self.idle_s + _TRIGGER_STOP_S)
        for name, trigger in wanted.items():
            if name in self._triggers:
                continue
            await ensure_trigger_consumer(self.js, trigger)

            async def handle(msg: Msg, trigger: EventTrigger = trigger) -> None:
                await self._on_event(trigger, msg)

            loop = self._loop(names.STREAM_EVENTS, names.trigger_consumer(name), handle)
            await loop.start()
            self._triggers[name] = (trigger, loop)

"""Schedules (cron) and event triggers that enqueue tasks; see docs/scheduler.md.

Definitions live in the ``af_schedules`` KV bucket, one key per name, as JSON
with a ``kind`` of ``cron`` or ``trigger``:

* a :class:`CronSchedule` is also registered as a *server-side message
  schedule*: a message on ``af.schedules.def.<name>`` whose ``Nats-Schedule``
  header makes nats-server store a copy on ``af.schedules.fire.<name>`` at
  every tick. One schedule per subject, so the server fires each tick once,
  however many scheduler replicas run;
* an :class:`EventTrigger` is a durable consumer ``trigger-<name>`` on
  ``AF_EVENTS`` filtered by its subject pattern, created when it is added (so
  events published after ``add_trigger`` returns are never missed).

The :class:`~mesh.schedules.scheduler.Scheduler` service turns firings and matching events
into tasks with an idempotency key per firing/event, so each becomes exactly
one task even with redeliveries and several replicas.
"""

from __future__ import annotations

import contextlib
import json
import re
import zoneinfo
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from croniter import CroniterBadDateError, croniter
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from mesh import names
from mesh.envelope import Priority, priority_by_name, utcnow
from mesh.errors import MeshError
from mesh.kv import current_entries
from mesh.queue.producer import DEFAULT_TTL_S, MAX_TTL_S

__all__ = [
    "CronSchedule",
    "Definition",
    "EventTrigger",
    "ScheduleExists",
    "ScheduleInvalid",
    "ScheduleNotFound",
    "add_definition",
    "get_definition",
    "list_definitions",
    "parse_definition",
    "remove_definition",
    "subject_matches",
    "to_server_schedule",
]

NAME_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"
MACROS: Final = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_GO_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_EVENTS_PATTERN = re.compile(rf"^{re.escape(names.EVENTS_PREFIX)}(?:\.(?:[A-Za-z0-9_-]+|\*))*(?:\.>)?$")


class ScheduleNotFound(MeshError):
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"no schedule or trigger named {name!r}")
        self.name = name


class ScheduleExists(MeshError):
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule or trigger named {name!r} exists; remove it first")
        self.name = name


class ScheduleInvalid(MeshError):
    """Something croniter let through: the server refused it, or it never fires (Feb 30)."""

    status = 422


def _duration_s(text: str) -> float:
    if not _GO_DURATION.match(text):
        raise ValueError(f"@every wants a duration such as 30s, 5m or 1h30m, got {text!r}")
    return sum(float(n) * _UNIT_S[u] for n, u in _GO_PART.findall(text))


def to_server_schedule(expr: str) -> str:
    """The ``Nats-Schedule`` value for a user's expression, or ``ValueError`` saying why not.

    Accepts 5-field cron (minute hour day month weekday; seconds become 0),
    6-field cron with seconds first, ``@every <duration>`` of at least 1s and
    the macros ``@hourly``, ``@daily`` ... ``@yearly``.
    """
    text = " ".join(expr.split())
    if not text:
        raise ValueError("the cron expression is empty")
    if text.startswith("@"):
        if text in MACROS:
            return text
        if text.startswith("@every "):
            if _duration_s(text[len("@every ") :]) < 1.0:
                raise ValueError("@every must be at least 1s")
            return text
        raise ValueError(f"unknown macro {text!r}: use @every <duration> or one of {sorted(MACROS)}")
    fields = text.split(" ")
    if len(fields) == 5:
        six = f"0 {text}"
    elif len(fields) == 6:
        six = text
    else:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"or 6 with seconds first; {text!r} has {len(fields)}"
        )
    try:
        croniter(six, second_at_beginning=True)
    except Exception as exc:  # croniter raises several types, all meaning "invalid"
        raise ValueError(f"invalid cron expression {text!r}: {exc}") from None
    return six


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Unique among schedules and triggers")
    agent: str = Field(pattern=names.AGENT_KEY_RE.pattern)
    input: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    tenant: str = Field(default="default", pattern=r"^[A-Za-z0-9_-]{1,128}$")
    ttl_s: int = Field(default=DEFAULT_TTL_S, ge=1, le=MAX_TTL_S)
    created_at: datetime = Field(default_factory=utcnow)

    _by_name = field_validator("priority", mode="before")(priority_by_name)


class CronSchedule(_Common):
    """Enqueue ``agent`` with ``input`` at every tick of ``cron``."""

    kind: Literal["cron"] = "cron"
    cron: str = Field(description="5- or 6-field cron, @every <duration>, or @hourly ...")
    timezone: str | None = Field(default=None, description="IANA zone, e.g. Europe/Paris; UTC")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str) -> str:
        to_server_schedule(v)
        return " ".join(v.split())

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                zoneinfo.ZoneInfo(v)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "America", too long
                raise ValueError(f"unknown time zone {v!r} (use an IANA name)") from None
        return v

    @property
    def server_schedule(self) -> str:
        return to_server_schedule(self.cron)

    def next_fire(self, now: datetime | None = None) -> datetime | None:
        """The next tick after ``now`` (None for ``@every``: it counts from registration)."""
        if self.cron.startswith("@every"):
            return None
        zone = zoneinfo.ZoneInfo(self.timezone) if self.timezone else UTC
        base = (now or utcnow()).astimezone(zone)
        expr = self.cron if self.cron.startswith("@") else self.server_schedule
        nxt: datetime = croniter(expr, base, second_at_beginning=True).get_next(datetime)
        return nxt.astimezone(UTC)


class EventTrigger(_Common):
    """Enqueue ``agent`` for every event on AF_EVENTS matching ``on``.

    The task's input is ``{**input, event_field: {subject, seq, id, type,
    payload, created_at}}``; with ``event_field`` null it is ``input`` alone.
    """

    kind: Literal["trigger"] = "trigger"
    on: str = Field(
        description="Subject pattern on AF_EVENTS, e.g. af.events.execution.finished.fuel-combustion.*"
    )
    event_field: str | None = Field(default="event", min_length=1, max_length=64)

    @field_validator("on")
    @classmethod
    def _valid_pattern(cls, v: str) -> str:
        if not _EVENTS_PATTERN.match(v) or v == names.EVENTS_PREFIX:
            raise ValueError(
                f"{v!r} is not a subject pattern on AF_EVENTS: it must start with "
                f"'{names.EVENTS_PREFIX}.' and use tokens, '*' or a final '>'"
            )
        tokens = v.split(".")
        if v.startswith(names.FINISHED_PREFIX + ".") and len(tokens) == 5 and tokens[-1] != ">":
            raise ValueError(
                f"{v!r} matches no event: finished runs are published on "
                f"{names.FINISHED_PREFIX}.<agent>.<run id>; use {v + '.*'!r}"
            )
        return v

    @model_validator(mode="after")
    def _no_self_loop(self) -> EventTrigger:
        own = names.finished_subject(self.agent, "any-run")
        if subject_matches(self.on, own):
            raise ValueError(
                f"{self.on!r} matches {own!r}, the agent's own finished events: every run "
                "would trigger the next one; narrow the pattern"
            )
        return self


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` is one token, a final ``>`` one or more."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def _kind(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("kind") or ("trigger" if "on" in v else "cron"))
    return str(getattr(v, "kind", "cron"))


Definition = Annotated[
    Annotated[CronSchedule, Tag("cron")] | Annotated[EventTrigger, Tag("trigger")],
    Discriminator(_kind),
]
_DEFINITION: TypeAdapter[CronSchedule | EventTrigger] = TypeAdapter(Definition)


def parse_definition(data: Any) -> CronSchedule | EventTrigger:
    """Validate a dict (``kind`` optional: ``on`` means a trigger) or JSON bytes."""
    if isinstance(data, bytes | str):
        return _DEFINITION.validate_json(data)
    return _DEFINITION.validate_python(data)


async def _bucket(js: JetStreamContext) -> KeyValue:
    return await js.key_value(names.BUCKET_SCHEDULES)


async def register_cron(js: JetStreamContext, sched: CronSchedule) -> None:
    """(Re)publish the server-side schedule message; replacing resets ``@every``."""
    headers = {
        "Nats-Schedule": sched.server_schedule,
        "Nats-Schedule-Target": names.schedule_fire_subject(sched.name),
    }
    if sched.timezone:
        headers["Nats-Schedule-Time-Zone"] = sched.timezone
    try:
        await js.publish(
            names.schedule_def_subject(sched.name), sched.model_dump_json().encode(), headers=headers
        )
    except APIError as exc:
        detail = exc.description or str(exc)
        raise ScheduleInvalid(f"nats-server refused schedule {sched.cron!r}: {detail}") from exc


async def ensure_trigger_consumer(js: JetStreamContext, trig: EventTrigger) -> None:
    """Create the trigger's durable consumer (new events only) unless it exists as configured."""
    durable = names.trigger_consumer(trig.name)
    try:
        info = await js.consumer_info(names.STREAM_EVENTS, durable)
        if info.config.filter_subject == trig.on:
            return
        await js.delete_consumer(names.STREAM_EVENTS, durable)
    except NotFoundError:
        pass
    config = ConsumerConfig(
        durable_name=durable, filter_subject=trig.on, deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0, max_ack_pending=1000,
        description=f"event trigger {trig.name} -> {trig.agent}",
    )  # fmt: skip
    await js.add_consumer(names.STREAM_EVENTS, config)


async def add_definition(
    js: JetStreamContext, definition: CronSchedule | EventTrigger, *, replace: bool = False
) -> CronSchedule | EventTrigger:
    """Store and activate a definition. Without ``replace`` an existing name is an error."""
    if isinstance(definition, CronSchedule):
        try:
            definition.next_fire()
        except CroniterBadDateError as exc:  # checked on write only: a stored one stays readable
            raise ScheduleInvalid(f"cron {definition.cron!r} never fires: {exc}") from None
    kv = await _bucket(js)
    data = definition.model_dump_json().encode()
    old: CronSchedule | EventTrigger | None = None
    if replace:
        old = await get_definition(js, definition.name, missing_ok=True)
        await kv.put(definition.name, data)
    else:
        try:
            await kv.create(definition.name, data)
        except KeyWrongLastSequenceError:
            raise ScheduleExists(definition.name) from None
    try:
        if old is not None and old.kind != definition.kind:
            await _deactivate(js, old)
        if isinstance(definition, CronSchedule):
            await register_cron(js, definition)
        else:
            await ensure_trigger_consumer(js, definition)
    except Exception:
        if old is None:  # leave nothing half-made behind
            await kv.delete(definition.name)
        raise
    return definition


async def get_definition(
    js: JetStreamContext, name: str, *, missing_ok: bool = False
) -> CronSchedule | EventTrigger | None:
    if not re.match(NAME_PATTERN, name):
        if missing_ok:
            return None
        raise ScheduleNotFound(name)
    kv = await _bucket(js)
    try:
        entry = await kv.get(name)
    except KeyNotFoundError:  # also KeyDeletedError
        entry = None
    if entry is None or not entry.value:
        if missing_ok:
            return None
        raise ScheduleNotFound(name)
    return parse_definition(entry.value)


async def list_definitions(js: JetStreamContext) -> list[CronSchedule | EventTrigger]:
    """Every definition, sorted by name; leaves no consumer behind (see :mod:`mesh.kv`)."""
    kv = await _bucket(js)
    entries = await current_entries(js, kv, names.BUCKET_SCHEDULES)
    return [parse_definition(entry.value) for entry in entries if entry.value]


async def _deactivate(js: JetStreamContext, definition: CronSchedule | EventTrigger) -> None:
    if isinstance(definition, CronSchedule):
        # Purge the definition (the server forgets the schedule) and any
        # firing not yet relayed.
        await js.purge_stream(names.STREAM_SCHEDULES, subject=names.schedule_def_subject(definition.name))
        await js.purge_stream(names.STREAM_SCHEDULES, subject=names.schedule_fire_subject(definition.name))
    else:
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(names.STREAM_EVENTS, names.trigger_consumer(definition.name))


async def remove_definition(js: JetStreamContext, name: str) -> CronSchedule | EventTrigger:
    """Delete the definition first, then stop it: a firing that slips through is dropped
    by the relay because its definition is gone."""
    definition = await get_definition(js, name)
    assert definition is not None
    kv = await _bucket(js)
    await kv.delete(name)
    await _deactivate(js, definition)
    return definition


def describe(definition: CronSchedule | EventTrigger) -> dict[str, Any]:
    """The JSON view the API returns (adds ``next_fire`` for cron)."""
    view: dict[str, Any] = json.loads(definition.model_dump_json())
    view["priority"] = Priority(definition.priority).name
    if isinstance(definition, CronSchedule):
        nxt = definition.next_fire()
        view["next_fire"] = nxt.isoformat() if nxt else None
    return view

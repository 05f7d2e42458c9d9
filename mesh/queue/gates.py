"""Dispatch gates: whether workers may start an agent's tasks, decided elsewhere, obeyed here.

The lifecycle (``agents.lifecycle``) decides whether an agent takes work —
not before its version is RUNNING, not while it drains, never once retired —
and writes the decision to KV: key ``dispatch.gate.<agent>`` of ``af_config``,
a :class:`Gate` as JSON. A worker follows those keys (:class:`GateWatch`) and
its dispatch policy obeys them (:attr:`mesh.queue.dispatch.Lane.has_room`);
a gate open ``only`` to dedicated workers (an agent in dedicated mode, served by
workers of its own) is closed to the shared pools:
no pull is made for a closed lane, deliveries that arrive for it anyway are
handed back at once (not counted as attempts), and tasks already running go
on unless the gate says ``stop`` (a force-stop: they are cancelled and handed
back). An agent without a key is open: agents nobody manages run as before.

Following is a core NATS subscription to the keys' subjects (each write is
seen as it is stored; nothing is left on the server) plus a full read at
start and every ``resync_s``, which repairs anything missed while
disconnected (:mod:`mesh.wire.follow`, shared with the circuit breakers).
What is not guaranteed: a worker that cannot reach NATS keeps the gates it
last saw until it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from mesh import names
from mesh.kv import current_entries
from mesh.wire.follow import KeyFollower

__all__ = [
    "GATE_PREFIX",
    "Gate",
    "GateWatch",
    "HeldBy",
    "Probes",
    "clear_gate",
    "gate_key",
    "held_tasks",
    "read_gates",
    "write_gate",
]

log = logging.getLogger(__name__)

GATE_PREFIX = "dispatch.gate."


class Gate(BaseModel):
    """An agent's dispatch gate. ``stop``: also cancel what runs (force-stop)."""

    open: bool = True
    stop: bool = False
    state: str | None = None  # the lifecycle state that decided it, for `queue stats`
    reason: str = ""
    only: str | None = None  # open only to workers of this role ("dedicated": the agent's own)

    def open_to(self, role: str) -> bool:
        """Is it open to a worker of ``role`` ("pool" or "dedicated")?"""
        return self.open and (self.only is None or self.only == role)

    def describe(self) -> str:
        if self.open:
            return "open" if self.only is None else f"open to {self.only} workers only"
        what = "stopped" if self.stop else "closed"
        why = f" ({self.state}{': ' + self.reason if self.reason else ''})" if self.state else ""
        return what + why


OPEN = Gate()


def gate_key(agent: str) -> str:
    return GATE_PREFIX + agent


async def _config(js: JetStreamContext) -> KeyValue:
    return await js.key_value(names.BUCKET_CONFIG)


async def write_gate(js: JetStreamContext, agent: str, gate: Gate) -> int:
    """Store ``agent``'s gate; returns its revision."""
    kv = await _config(js)
    return await kv.put(gate_key(agent), gate.model_dump_json().encode())


async def clear_gate(js: JetStreamContext, agent: str) -> None:
    """Remove ``agent``'s gate: it is open again, as an unmanaged agent's."""
    kv = await _config(js)
    await kv.delete(gate_key(agent))


def _parse(agent: str, data: bytes | None) -> Gate:
    if not data:
        return OPEN
    try:
        return Gate.model_validate_json(data)
    except ValidationError as exc:  # never let a bad value open or close the fleet by accident
        log.error("dispatch gate of %s is not a gate (%s); treating it as closed", agent, exc)
        return Gate(open=False, reason="unreadable gate value")


async def read_gates(js: JetStreamContext) -> dict[str, Gate]:
    """Every agent's gate that is set (agents not listed are open)."""
    try:
        kv = await _config(js)
        entries = await current_entries(js, kv, names.BUCKET_CONFIG, GATE_PREFIX + "*")
    except (BucketNotFoundError, NotFoundError):  # not provisioned: nobody can have set a gate
        return {}
    return {e.key[len(GATE_PREFIX) :]: _parse(e.key[len(GATE_PREFIX) :], e.value) for e in entries}


class Probes(BaseModel):
    """What an agent's health probes last said in one worker (None: it declares no such probe)."""

    started: bool | None = None  # startup: passed once (until then, not ready)
    ready: bool | None = None  # readiness: may it take tasks here now
    alive: bool | None = None  # liveness
    error: str | None = None  # the last failing probe's error
    checked_at: float | None = None  # time.time() of the last probe


class HeldBy(BaseModel):
    """One worker's answer to :func:`held_tasks`."""

    worker: str
    role: str = "pool"  # "dedicated": one of the agent's own workers
    version: str | None = None  # of the agent, as this worker runs it
    running: int  # started, not finished
    held: int  # delivered to it, not started (handed back when its gate is closed)
    probes: Probes = Field(default_factory=Probes)


async def held_tasks(nc: Client, agent: str, window_s: float = 0.3) -> list[HeldBy]:
    """What every worker serving ``agent`` holds of it now: each answers on
    ``af.control.inflight.<agent>``; answers are gathered for ``window_s``.

    A drain is over when every answer says 0. What is not guaranteed: a worker
    that does not answer within the window (stopped, cut off) is not counted;
    what it holds comes back to the queue by its ack wait, never lost.
    """
    inbox = nc.new_inbox()
    answers: list[HeldBy] = []

    async def on_answer(msg: Msg) -> None:
        with contextlib.suppress(ValidationError):
            answers.append(HeldBy.model_validate_json(msg.data))

    sub = await nc.subscribe(inbox, cb=on_answer)
    try:
        await nc.publish(names.inflight_subject(agent), b"", reply=inbox)
        await asyncio.sleep(window_s)  # a scatter-gather has no last answer to wait for
    finally:
        await sub.unsubscribe()
    return answers


class GateWatch(KeyFollower[Gate]):
    """Follows the gates of ``agents`` and calls ``on_change(agent, gate)`` on each change
    (:class:`~mesh.wire.follow.KeyFollower` on ``dispatch.gate.<agent>`` of ``af_config``).

    :meth:`start` returns once the current gates are known (a worker must not
    pull for a closed agent while it starts)."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        agents: list[str],
        on_change: Callable[[str, Gate], None],
        resync_s: float = 10.0,
    ) -> None:
        def changed(agent: str, gate: Gate) -> None:
            log.info("dispatch gate of %s: %s", agent, gate.describe())
            on_change(agent, gate)

        super().__init__(nc, js, names.BUCKET_CONFIG, GATE_PREFIX, agents, _parse, changed, resync_s)

    @property
    def gates(self) -> dict[str, Gate]:
        return self.values

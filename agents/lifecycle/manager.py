"""The lifecycle manager: applies one transition of an agent version, atomically, for the whole fleet.

A transition is:

1. take the agent's lease in ``af_locks`` (:class:`mesh.locks.Locks`; another
   manager holding it gets :class:`TransitionConflict` naming the holder);
2. read the version's state and revision from PostgreSQL and check the move
   against the state machine (:func:`~agents.lifecycle.states.check_transition`:
   an illegal one names the current state and the allowed next ones);
3. in one PostgreSQL transaction, write the new state *only if the revision
   read is still the row's* (a fence: a holder whose lease expired while it
   worked cannot overwrite a newer transition) and the audit row;
4. publish it: the agent's dispatch gate (:mod:`mesh.queue.gates`: open while a
   version is RUNNING or DEGRADED, closed otherwise, ``stop`` on entering
   FORCE_STOPPED or RETIRED),
   then the ``lifecycle.changed`` event on ``AF_EVENTS``, then mark the audit
   row published;
5. release the lease.

The database is the truth; step 4 is an outbox: a transition whose gate or
event was not confirmed (NATS away, the process killed between 3 and 4) is
published again by :meth:`LifecycleManager.publish_pending` (the gateway runs
it at start and every few seconds). The event's ``Nats-Msg-Id`` is the
transition's id, so a re-publish inside the stream's duplicate window is
stored once; after it, a reader may see an event twice and keys on its ``id``.
The gate written is always computed from the database's current states, so a
late re-publish never brings back an older gate.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
from nats.js import JetStreamContext
from pydantic_core import to_json

from agents.errors import AgentError
from agents.lifecycle.states import State, check_transition
from mesh import names
from mesh.envelope import ChannelType, Envelope, MessageType
from mesh.locks import DEFAULT_TTL_S, LockHeld, LockLost, Locks
from mesh.queue.gates import Gate, write_gate
from mesh.queue.runs import LIFECYCLE_CHANGED, LifecycleChanged

__all__ = [
    "OPEN_STATES",
    "AgentVersionNotFound",
    "LifecycleManager",
    "Transition",
    "TransitionConflict",
    "VersionRecord",
    "gate_for",
]

log = logging.getLogger(__name__)

#: The states in which a version takes tasks.
OPEN_STATES = frozenset({State.RUNNING, State.DEGRADED})
#: Entering these also stops what still runs (handed back to the queue).
_STOPPING = frozenset({State.FORCE_STOPPED, State.RETIRED})

Mode = Literal["pool", "dedicated"]


class TransitionConflict(AgentError):
    """Another manager is changing this agent, or changed it meanwhile: try again."""

    status = 409


class AgentVersionNotFound(AgentError):
    status = 404

    def __init__(self, agent: str, version: str | None = None) -> None:
        what = f"{agent!r} version {version!r}" if version else f"{agent!r}"
        super().__init__(f"no lifecycle record of agent {what}; register it first (deploy does)")
        self.agent, self.version = agent, version


@dataclass(frozen=True, slots=True)
class VersionRecord:
    agent: str
    version: str
    state: State
    mode: Mode
    reason: str | None
    revision: int
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "version": self.version, "state": self.state.value, "mode": self.mode,
            "reason": self.reason, "revision": self.revision, "updated_at": self.updated_at.isoformat(),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Transition:
    id: int
    agent: str
    version: str
    from_state: State
    to_state: State
    actor: str
    reason: str | None
    at: datetime
    published: bool = False  # its gate and event are confirmed stored

    def event(self) -> LifecycleChanged:
        return LifecycleChanged(
            id=self.id, agent=self.agent, version=self.version, from_state=self.from_state.value,
            to_state=self.to_state.value, actor=self.actor, reason=self.reason, at=self.at,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {**self.event().model_dump(mode="json"), "published": self.published}


def gate_for(versions: list[VersionRecord], last: State | None = None) -> Gate:
    """The dispatch gate of an agent whose versions are ``versions`` (newest change
    first); ``last`` is the state just entered (it names why a gate is closed).
    Open to dedicated workers only when every open version runs dedicated."""
    live = [v for v in versions if v.state in OPEN_STATES]
    if live:
        return Gate(only="dedicated" if all(v.mode == "dedicated" for v in live) else None)
    stop = last in _STOPPING
    shown = last or (versions[0].state if versions else None)
    return Gate(open=False, stop=stop, state=shown.value if shown else None)


def lock_key(agent: str) -> str:
    return f"agent.{agent}"


_VERSION_COLUMNS = "agent_key, version, state, mode, reason, revision, updated_at"
_TRANSITION_COLUMNS = "id, agent_key, version, from_state, to_state, actor, reason, at, published_at"


def _version(row: asyncpg.Record) -> VersionRecord:
    return VersionRecord(
        row["agent_key"], row["version"], State(row["state"]), row["mode"], row["reason"],
        row["revision"], row["updated_at"],
    )  # fmt: skip


def _transition(row: asyncpg.Record) -> Transition:
    return Transition(
        row["id"], row["agent_key"], row["version"], State(row["from_state"]), State(row["to_state"]),
        row["actor"], row["reason"], row["at"], row["published_at"] is not None,
    )  # fmt: skip


class LifecycleManager:
    """Applies and records lifecycle transitions (see the module docstring).

    ``holder`` names this manager in the lease (``gateway@host/pid``), so a
    conflict says who else is at work."""

    def __init__(
        self, pool: asyncpg.Pool, js: JetStreamContext, *, holder: str, lock_ttl_s: int = DEFAULT_TTL_S
    ) -> None:
        self.pool, self.js = pool, js
        self.holder = holder
        self.lock_ttl_s = lock_ttl_s
        self.locks = Locks(js)

    # ---- reading -------------------------------------------------------------

    async def register(self, agent: str, version: str, mode: Mode = "pool") -> VersionRecord:
        """The version's record, created in CREATED if it has none (idempotent)."""
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO agent_versions (agent_key, version, mode) VALUES ($1, $2, $3)"
                " ON CONFLICT (agent_key, version) DO NOTHING",
                agent, version, mode,
            )  # fmt: skip
            row = await conn.fetchrow(
                f"SELECT {_VERSION_COLUMNS} FROM agent_versions WHERE agent_key = $1 AND version = $2",
                agent, version,
            )  # fmt: skip
        assert row is not None
        return _version(row)

    async def set_mode(self, agent: str, version: str, mode: Mode) -> VersionRecord:
        """Run ``version`` in ``mode`` from its next deploy (refused while it is live)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"UPDATE agent_versions SET mode = $3, updated_at = now() WHERE agent_key = $1"
                f" AND version = $2 AND state NOT IN ('running', 'degraded', 'draining')"
                f" RETURNING {_VERSION_COLUMNS}",
                agent, version, mode,
            )  # fmt: skip
        if row is None:
            current = await self.version(agent, version)  # 404 if there is none
            raise TransitionConflict(
                f"{agent} {version} is {current.state.value}: its mode changes only when it is not live"
            )
        return _version(row)

    async def versions(self, agent: str) -> list[VersionRecord]:
        """Every version of ``agent`` with a lifecycle record, newest change first."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_VERSION_COLUMNS} FROM agent_versions WHERE agent_key = $1"
                " ORDER BY updated_at DESC, version DESC",
                agent,
            )  # fmt: skip
        return [_version(r) for r in rows]

    async def version(self, agent: str, version: str) -> VersionRecord:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_VERSION_COLUMNS} FROM agent_versions WHERE agent_key = $1 AND version = $2",
                agent, version,
            )  # fmt: skip
        if row is None:
            raise AgentVersionNotFound(agent, version)
        return _version(row)

    async def history(self, agent: str, limit: int = 100, before: int | None = None) -> list[Transition]:
        """``agent``'s transitions, newest first (``before``: only ids below it, for paging)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_TRANSITION_COLUMNS} FROM lifecycle_transitions WHERE agent_key = $1"
                " AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3",
                agent, before, limit,
            )  # fmt: skip
        return [_transition(r) for r in rows]

    # ---- changing ------------------------------------------------------------

    async def transition(
        self, agent: str, version: str, to: State, *, actor: str, reason: str | None = None
    ) -> Transition:
        """Move ``agent`` ``version`` to ``to`` (see the module docstring).

        Raises :class:`TransitionConflict` (409) when another manager holds the
        agent or changed it meanwhile, :class:`~agents.lifecycle.states.IllegalTransition`
        (409) when the state machine forbids the move, :class:`AgentVersionNotFound` (404).
        """
        try:
            lease = await self.locks.acquire(lock_key(agent), self.holder, self.lock_ttl_s)
        except LockHeld as exc:
            raise TransitionConflict(
                f"agent {agent!r} is being changed by {exc.holder}; try again when it is done"
            ) from exc
        try:
            done = await self._write(agent, version, to, actor, reason)
            return await self._publish(done, fresh=True)
        finally:
            try:
                await self.locks.release(lease)
            except LockLost:  # expired meanwhile: the revision fence kept the write safe
                log.warning("lifecycle lease of %s expired before its release", agent)

    async def _write(self, agent: str, version: str, to: State, actor: str, reason: str | None) -> Transition:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT state, revision FROM agent_versions WHERE agent_key = $1 AND version = $2",
                agent, version,
            )  # fmt: skip
            if row is None:
                raise AgentVersionNotFound(agent, version)
            current = State(row["state"])
            await self._check(current, to)
            moved = await conn.fetchval(
                "UPDATE agent_versions SET state = $3, reason = $4, revision = revision + 1,"
                " updated_at = now() WHERE agent_key = $1 AND version = $2 AND revision = $5"
                " RETURNING revision",
                agent, version, to.value, reason, row["revision"],
            )  # fmt: skip
            if moved is None:
                raise TransitionConflict(
                    f"agent {agent!r} version {version!r} changed while this transition was made; "
                    "read its state and try again"
                )
            audit = await conn.fetchrow(
                "INSERT INTO lifecycle_transitions (agent_key, version, from_state, to_state, actor, reason)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, at",
                agent, version, current.value, to.value, actor, reason,
            )  # fmt: skip
        assert audit is not None
        return Transition(audit["id"], agent, version, current, to, actor, reason, audit["at"])

    async def _check(self, current: State, to: State) -> None:
        """The state machine's verdict on the move (a seam: the fence test pauses here)."""
        check_transition(current, to)

    # ---- publishing (the outbox) ---------------------------------------------

    async def _publish(self, transition: Transition, fresh: bool) -> Transition:
        """Gate, event, mark: the transition as published, or as it was if NATS
        did not confirm (:meth:`publish_pending` tries again). ``fresh``: just
        made, so its new state is the agent's latest (an old one's is not)."""
        try:
            await self.sync_gate(transition.agent, transition.to_state if fresh else None)
            envelope = Envelope(
                id=f"lifecycle-{transition.id}", source=transition.agent, message_type=MessageType.EVENT,
                channel_type=ChannelType.DURABLE, type=LIFECYCLE_CHANGED,
                payload=transition.event().model_dump(mode="json"), created_at=transition.at,
            )  # fmt: skip
            await self.js.publish(
                names.lifecycle_subject(transition.agent),
                to_json(envelope),
                headers={"Nats-Msg-Id": envelope.id, "Content-Type": "application/json"},
            )
        except Exception as exc:  # recorded in PostgreSQL: the outbox publishes it later
            log.warning("lifecycle transition %s of %s not published yet: %s", transition.id,
                        transition.agent, exc)  # fmt: skip
            return transition
        async with self.pool.acquire() as conn:
            await conn.execute(
                "UPDATE lifecycle_transitions SET published_at = now() WHERE id = $1", transition.id
            )
        return dataclasses.replace(transition, published=True)

    async def sync_gate(self, agent: str, last: State | None = None) -> Gate:
        """Write ``agent``'s dispatch gate as its versions' current states decide."""
        versions = await self.versions(agent)
        gate = gate_for(versions, last)
        await write_gate(self.js, agent, gate)
        return gate

    async def publish_pending(self, limit: int = 100) -> int:
        """Publish transitions whose gate and event were not confirmed, oldest
        first; returns how many are now published."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_TRANSITION_COLUMNS} FROM lifecycle_transitions WHERE published_at IS NULL"
                " ORDER BY id LIMIT $1",
                limit,
            )  # fmt: skip
        published = 0
        for row in rows:
            done = await self._publish(_transition(row), fresh=False)
            published += done.published
        return published

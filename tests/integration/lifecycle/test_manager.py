"""The lifecycle manager on a real PostgreSQL and a real nats-server: each
transition is checked, fenced, recorded with its audit row, gates dispatch
and is announced once; managers racing on one agent get exactly one winner."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from nats.js import JetStreamContext

from agents.lifecycle.manager import (
    AgentVersionNotFound,
    LifecycleManager,
    TransitionConflict,
)
from agents.lifecycle.states import IllegalTransition, State
from mesh import names
from mesh.queue.gates import Gate, read_gates
from tests.helpers import unique

PATH_TO_RUNNING = [State.VALIDATING, State.VALIDATED, State.DEPLOYING, State.WARMING_UP, State.RUNNING]


def _manager(pool: asyncpg.Pool, js: JetStreamContext, holder: str = "test-manager") -> LifecycleManager:
    return LifecycleManager(pool, js, holder=holder)


async def _events(js: JetStreamContext, agent: str) -> list[dict[str, Any]]:
    """Every lifecycle.changed event of ``agent`` stored on AF_EVENTS, in order."""
    subject = names.lifecycle_subject(agent)
    info = await js.stream_info(names.STREAM_EVENTS, subjects_filter=subject)
    count = (info.state.subjects or {}).get(subject, 0)
    if not count:
        return []
    sub = await js.subscribe(subject, stream=names.STREAM_EVENTS, ordered_consumer=True)
    events = []
    for _ in range(count):
        msg = await sub.next_msg(timeout=5)
        events.append(json.loads(msg.data)["payload"])
    await sub.unsubscribe()
    return events


async def _to_running(manager: LifecycleManager, agent: str, version: str = "1.0.0") -> None:
    await manager.register(agent, version)
    for state in PATH_TO_RUNNING:
        await manager.transition(agent, version, state, actor="ci")


async def test_a_version_walks_to_running_recorded_gated_and_announced(
    pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    agent, manager = unique("walk"), _manager(pool, mesh_js)
    created = await manager.register(agent, "1.0.0")
    assert created.state == State.CREATED and created.revision == 0
    assert await manager.register(agent, "1.0.0") == created  # idempotent

    seen_gates = []
    for state in PATH_TO_RUNNING:
        done = await manager.transition(agent, "1.0.0", state, actor="alice", reason=f"to {state}")
        assert done.to_state == state and done.published
        seen_gates.append((await read_gates(mesh_js))[agent])
    # Closed until RUNNING, each naming the state that closed it.
    assert seen_gates[:-1] == [Gate(open=False, state=s.value) for s in PATH_TO_RUNNING[:-1]]
    assert seen_gates[-1] == Gate()

    record = await manager.version(agent, "1.0.0")
    assert record.state == State.RUNNING and record.revision == len(PATH_TO_RUNNING)
    history = await manager.history(agent)
    assert [(t.from_state, t.to_state) for t in reversed(history)] == list(
        zip([State.CREATED, *PATH_TO_RUNNING[:-1]], PATH_TO_RUNNING, strict=True)
    )
    assert {t.actor for t in history} == {"alice"} and all(t.published for t in history)
    assert history[0].reason == "to running"

    events = await _events(mesh_js, agent)
    assert [e["id"] for e in events] == [t.id for t in reversed(history)]
    assert events[-1]["from_state"] == "warming_up" and events[-1]["to_state"] == "running"
    assert events[-1]["version"] == "1.0.0" and events[-1]["actor"] == "alice"


async def test_an_illegal_transition_names_the_state_and_changes_nothing(
    pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    agent, manager = unique("illegal"), _manager(pool, mesh_js)
    await _to_running(manager, agent)
    before = await manager.version(agent, "1.0.0")
    with pytest.raises(IllegalTransition, match="cannot go from running to validated; allowed next: "
                       "degraded, draining, failed"):  # fmt: skip
        await manager.transition(agent, "1.0.0", State.VALIDATED, actor="ci")
    assert await manager.version(agent, "1.0.0") == before
    assert len(await manager.history(agent)) == len(PATH_TO_RUNNING)
    with pytest.raises(AgentVersionNotFound):
        await manager.transition(agent, "9.9.9", State.VALIDATING, actor="ci")
    # The lease was released each time: a legal move goes through at once.
    assert (await manager.transition(agent, "1.0.0", State.DRAINING, actor="ci")).published


class _Together(LifecycleManager):
    """Managers that, once past the lease, all read the state before any writes:
    the worst interleaving, every time, should the lease ever let two through."""

    def __init__(self, pool: asyncpg.Pool, js: JetStreamContext, holder: str, race: dict[str, Any]) -> None:
        super().__init__(pool, js, holder=holder)
        self.race = race

    async def _check(self, current: State, to: State) -> None:
        await super()._check(current, to)
        race = self.race
        async with race["cond"]:
            race["read"] += 1
            race["cond"].notify_all()
            await race["cond"].wait_for(lambda: race["read"] + race["out"] >= race["n"])


async def test_managers_racing_on_one_agent_make_exactly_one_transition(
    pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    agent, n = unique("race"), 10
    await _to_running(_manager(pool, mesh_js), agent)
    race: dict[str, Any] = {"cond": asyncio.Condition(), "read": 0, "out": 0, "n": n}
    managers = [_Together(pool, mesh_js, f"manager-{i}", race) for i in range(n)]

    async def attempt(m: LifecycleManager) -> Any:
        try:
            return await m.transition(agent, "1.0.0", State.DRAINING, actor=m.holder)
        except Exception as exc:
            async with race["cond"]:  # out before reading: the others need not wait for it
                race["out"] += 1
                race["cond"].notify_all()
            return exc

    outcomes = await asyncio.gather(*(attempt(m) for m in managers))
    won = [o for o in outcomes if not isinstance(o, BaseException)]
    lost = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(won) == 1, outcomes
    # A loser found the lease taken (and hears who holds it) or the state moved on.
    for exc in lost:
        assert isinstance(exc, TransitionConflict | IllegalTransition), exc
        assert getattr(exc, "status", None) == 409
    assert any("is being changed by manager-" in str(exc) for exc in lost)
    draining = [t for t in await _manager(pool, mesh_js).history(agent) if t.to_state == State.DRAINING]
    assert len(draining) == 1 and draining[0].actor == won[0].actor
    assert len([e for e in await _events(mesh_js, agent) if e["to_state"] == "draining"]) == 1


class _Paused(LifecycleManager):
    """Stops after reading the state, until told to go on: a holder frozen past its lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read, self.go = asyncio.Event(), asyncio.Event()

    async def _check(self, current: State, to: State) -> None:
        await super()._check(current, to)
        self.read.set()
        await self.go.wait()


async def test_a_holder_whose_lease_expired_cannot_overwrite_a_newer_transition(
    pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    agent = unique("fence")
    await _to_running(_manager(pool, mesh_js), agent)
    frozen = _Paused(pool, mesh_js, holder="frozen", lock_ttl_s=1)
    late = asyncio.create_task(frozen.transition(agent, "1.0.0", State.DEGRADED, actor="frozen"))
    await asyncio.wait_for(frozen.read.wait(), 5)
    # Its 1 s lease runs out while it is frozen; another manager takes the agent.
    other = _manager(pool, mesh_js, holder="other")
    for _ in range(100):
        try:
            await other.transition(agent, "1.0.0", State.DRAINING, actor="other")
            break
        except TransitionConflict:
            await asyncio.sleep(0.1)  # the lease's TTL, not a synchronisation: poll until it lapses
    else:
        pytest.fail("the frozen holder's lease never expired")
    frozen.go.set()
    with pytest.raises(TransitionConflict, match="changed while this transition was made"):
        await late
    assert (await other.version(agent, "1.0.0")).state == State.DRAINING
    assert [t.actor for t in await other.history(agent, limit=1)] == ["other"]


async def test_an_unconfirmed_event_is_recorded_and_published_later_once(
    pool: asyncpg.Pool, mesh_js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, manager = unique("outbox"), _manager(pool, mesh_js)
    await _to_running(manager, agent)
    events_before = len(await _events(mesh_js, agent))

    real_publish = mesh_js.publish

    async def unanswered(subject: str, *args: Any, **kwargs: Any) -> Any:
        if subject.startswith(names.LIFECYCLE_PREFIX):  # the event goes unanswered; the rest is real
            raise TimeoutError("no PubAck (NATS away)")
        return await real_publish(subject, *args, **kwargs)

    monkeypatch.setattr(mesh_js, "publish", unanswered)
    done = await manager.transition(agent, "1.0.0", State.DRAINING, actor="ci", reason="outbox")
    monkeypatch.setattr(mesh_js, "publish", real_publish)
    assert not done.published
    assert (await manager.version(agent, "1.0.0")).state == State.DRAINING  # the database is the truth
    assert not (await manager.history(agent, limit=1))[0].published
    assert len(await _events(mesh_js, agent)) == events_before

    assert await manager.publish_pending() >= 1
    assert (await manager.history(agent, limit=1))[0].published
    assert all(t.published for t in await manager.history(agent))
    events = await _events(mesh_js, agent)
    assert [e["to_state"] for e in events[events_before:]] == ["draining"]
    assert (await read_gates(mesh_js))[agent] == Gate(open=False, state="draining")

    # Published again inside the duplicate window (a manager killed before marking it): stored once.
    await manager._publish((await manager.history(agent, limit=1))[0], fresh=False)
    assert len(await _events(mesh_js, agent)) == len(events)


async def test_a_late_republish_never_brings_back_an_older_gate(
    pool: asyncpg.Pool, mesh_js: JetStreamContext
) -> None:
    agent, manager = unique("oldgate"), _manager(pool, mesh_js)
    await _to_running(manager, agent)
    running = (await manager.history(agent, limit=1))[0]
    await manager.transition(agent, "1.0.0", State.DRAINING, actor="ci")
    await manager.transition(agent, "1.0.0", State.FORCE_STOPPED, actor="ci")
    assert (await read_gates(mesh_js))[agent] == Gate(open=False, stop=True, state="force_stopped")
    await manager._publish(running, fresh=False)  # the old "to running" once more
    gate = (await read_gates(mesh_js))[agent]
    assert not gate.open and gate.state == "force_stopped"

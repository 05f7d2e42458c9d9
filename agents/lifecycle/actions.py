"""What an operator asks of an agent — deploy, drain, retire, restart, force-stop —
as the transitions that carry it out (each one made by the manager, under the
agent's lease, recorded and announced).

* **deploy**: CREATED → VALIDATING → VALIDATED (the agent loads here, its
  version is the one asked for, its schemas render) → DEPLOYING (its queue
  lanes exist) → WARMING_UP (``Agent.warm_up()``, bounded by
  ``warm_up_timeout_s``) → RUNNING, when the dispatch gate opens. A failed
  step ends in FAILED with the reason. A FAILED or FORCE_STOPPED version is
  checked again and deployed from DEPLOYING.
* **drain**: RUNNING/DEGRADED → DRAINING: the gate closes, workers take no
  more of the agent's tasks, what runs finishes. With ``wait``, returns once
  no worker holds any of them (or the drain timeout passes).
* **retire**: drains first (if running), waits up to the drain timeout
  (default 30 s, at most 300 s) for what runs to finish → RETIRED; if it does
  not finish in time → FORCE_STOPPED (the gate says stop: workers cancel what
  runs and hand it back to the queue at once) → RETIRED. A version never
  deployed, failed or force-stopped retires at once.
* **force-stop**: → DRAINING → FORCE_STOPPED at once.
* **restart**: a drain (as retire's) → FORCE_STOPPED, then deploy again.
* **rollback** to an earlier version: the live version's ``down`` migration
  hook (an installed package's, if it has one), then the earlier version
  deployed (its ``up`` hook not run), then the live one retired. A failed hook
  changes nothing; a failed deploy leaves the live version running.

A deploy of an installed version over a live one runs its ``up`` hook first
(from the live version; :mod:`agents.hub.migrations`); a failed hook FAILS the
deploy with the hook's last words, before any of its workers start.

An agent in **dedicated** mode (``Agent.execution_mode = "dedicated"``, ``mode``
on deploy, or ``mode: dedicated`` in its config or a tenant's override of it)
gets ``dedicated_workers`` processes of its own while DEPLOYING
(:mod:`agents.lifecycle.dedicated`: the deploy waits until each answers, and
fails with the last words of one that died); its gate opens to them only
(the tasks of every tenant then run there); retire, force-stop and restart stop them. A dedicated worker that
keeps crashing is restarted with backoff, and the version is FAILED with its
last error once the supervisor gives up.

Tasks of an agent no version of which is RUNNING or DEGRADED wait in the
queue (their TTL still runs), never lost: they run once a version is deployed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.contract import Agent
from agents.errors import AgentError
from agents.hub.install import Installer
from agents.hub.migrations import Direction, run_hook
from agents.hub.packaged import packaged_agent
from agents.lifecycle.dedicated import DedicatedWorkers
from agents.lifecycle.manager import LifecycleManager, Mode, Transition, VersionRecord
from agents.lifecycle.states import IllegalTransition, State, check_transition
from agents.packaging.spec import PackSpec
from agents.packaging.versions import parse_version, sort_key
from agents.registry import Registry
from agents.resilience.retries import queue_config
from agents.store.installs import get_installed, list_installed
from mesh.queue.agent_config import wants_dedicated
from mesh.queue.gates import HeldBy, held_tasks
from mesh.queue.worker import ensure_lane

__all__ = ["DEFAULT_DRAIN_S", "MAX_DRAIN_S", "Action", "ActionFailed", "Checkpoint", "Operator", "Outcome"]

log = logging.getLogger(__name__)

DEFAULT_DRAIN_S: Final = 30.0
MAX_DRAIN_S: Final = 300.0
_LIVE = frozenset({State.RUNNING, State.DEGRADED})
_DEPLOYABLE = frozenset({State.CREATED, State.VALIDATED, State.FAILED, State.FORCE_STOPPED})


class Action(StrEnum):
    DEPLOY = "deploy"
    DRAIN = "drain"
    RETIRE = "retire"
    RESTART = "restart"
    FORCE_STOP = "force-stop"
    ROLLBACK = "rollback"


class ActionFailed(AgentError):
    """An action that cannot start (the version cannot be deployed from here)."""

    status = 422


@dataclass
class Outcome:
    """What an action did: the transitions made, where the version ended, and why."""

    agent: str
    version: str
    action: Action
    state: State
    transitions: list[Transition] = field(default_factory=list)
    detail: str = ""
    held: list[HeldBy] = field(default_factory=list)  # what workers still held when it ended

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "version": self.version, "action": self.action.value,
            "state": self.state.value, "detail": self.detail,
            "transitions": [t.as_dict() for t in self.transitions],
            "held": [h.model_dump() for h in self.held],
        }  # fmt: skip


Checkpoint = Callable[["Outcome", bool], Awaitable[None]]
"""Called after each transition and at each look at a draining agent, with the
outcome so far and whether the action may stop there: only while it waits for a
drain (the version rests in DRAINING, from which retire and force-stop go on),
never between the steps of a deploy. There it may raise to stop the action (a
cancellation); what was done stays done."""


async def _no_checkpoint(out: Outcome, stoppable: bool) -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Target:
    """What a deploy serves: the agent (loaded here, or an installed version's stand-in)
    and, for an installed version, the directory its dedicated workers start in."""

    agent: Agent[Any, Any]
    package_dir: Path | None = None

    @property
    def unit(self) -> str:  # its dedicated workers' group (DedicatedWorkers)
        return f"{self.agent.key}@{self.agent.version}" if self.package_dir else self.agent.key


class Operator:
    """Carries out :class:`Action` s with a :class:`LifecycleManager`."""

    def __init__(
        self, manager: LifecycleManager, nc: Client, js: JetStreamContext, registry: Registry,
        *, poll_s: float = 0.25, dedicated: DedicatedWorkers | None = None, start_timeout_s: float = 60.0,
        installer: Installer | None = None,
    ) -> None:  # fmt: skip
        self.manager, self.nc, self.js, self.registry = manager, nc, js, registry
        self.poll_s = poll_s
        self.dedicated = dedicated  # None: this gateway cannot run dedicated workers
        self.installer = installer  # None: versions installed from the hub are not deployed here
        self.start_timeout_s = start_timeout_s  # dedicated workers: until they answer

    async def run(
        self, agent: str, action: Action, *, actor: str, version: str | None = None,
        reason: str | None = None, drain_timeout_s: float = DEFAULT_DRAIN_S, wait: bool = False,
        mode: Mode | None = None, checkpoint: Checkpoint = _no_checkpoint,
    ) -> Outcome:  # fmt: skip
        drain_timeout_s = min(max(drain_timeout_s, 0.0), MAX_DRAIN_S)
        if action == Action.DEPLOY:  # an agent loaded here, or an installed version, gets a record
            target = await self._target(agent, version)
            wanted = await self._wanted_mode(target, mode)
            record = await self.manager.register(agent, version or target.agent.version, wanted)
            if record.mode != wanted:
                record = await self.manager.set_mode(agent, record.version, wanted)
        else:
            record = await self._current(agent, version)
        out = Outcome(agent, record.version, action, record.state)
        step = _Steps(self.manager, out, actor, reason, checkpoint)
        if action == Action.DEPLOY:
            await self._deploy(step, record.mode, target)
        elif action == Action.DRAIN:
            await step.to(State.DRAINING)
            if wait:
                await self._wait_drained(out, drain_timeout_s, checkpoint)
        elif action == Action.FORCE_STOP:
            if out.state in _LIVE:
                await step.to(State.DRAINING)
            await step.to(State.FORCE_STOPPED)
            out.detail = "stopped: what ran was handed back to the queue"
            await self._stop_dedicated(record)
        elif action == Action.RETIRE:
            await self._retire(step, drain_timeout_s)
            await self._stop_dedicated(record)
        elif action == Action.RESTART:
            if out.state in _LIVE | {State.DRAINING}:
                await self._stop_gracefully(step, drain_timeout_s, then=State.FORCE_STOPPED)
            await self._stop_dedicated(record)
            await self._deploy(step, record.mode, await self._target(agent, record.version), migrate=False)
        elif action == Action.ROLLBACK:
            await self._rollback(step, record.mode, drain_timeout_s)
        return out

    async def check(self, agent: str, action: Action, *, version: str | None = None,
                    mode: Mode | None = None) -> None:  # fmt: skip
        """Raise now what :meth:`run` would refuse at its first step (the same
        errors), changing nothing: the API refuses these at once and runs the rest
        in the background. The state may still change in between; :meth:`run`
        checks again."""
        if action == Action.DEPLOY:
            target = await self._target(agent, version)
            await self._wanted_mode(target, mode)
            wanted = version or target.agent.version
            record = next((v for v in await self.manager.versions(agent) if v.version == wanted), None)
            if record is not None and record.state not in _LIVE:
                self._deployable(record.state, agent, record.version)
            return
        record = await self._current(agent, version)
        state = record.state
        if action == Action.DRAIN:
            check_transition(state, State.DRAINING)
        elif action in (Action.FORCE_STOP, Action.RETIRE) and state not in _LIVE | {State.DRAINING}:
            check_transition(state, State.FORCE_STOPPED if action == Action.FORCE_STOP else State.RETIRED)
        elif action == Action.RESTART and state not in _LIVE | {State.DRAINING}:
            self._deployable(state, agent, record.version)
        elif action == Action.ROLLBACK:
            await self._rolled_back_from(agent, record)
            if state not in _LIVE:
                self._deployable(state, agent, record.version)

    async def _wanted_mode(self, target: _Target, mode: Mode | None) -> Mode:
        """The mode a deploy of ``target`` runs in (an installed version: dedicated
        always, its code is in no pool), or :class:`ActionFailed` when it cannot here."""
        if target.package_dir is not None:
            if mode == "pool":
                raise ActionFailed(
                    f"{target.agent.key} {target.agent.version} is an installed package: it runs on "
                    "dedicated workers of its own, not in the shared pool"
                )
            wanted: Mode = "dedicated"
        else:
            wanted = mode or await self._mode_of(target.agent)
        if wanted == "dedicated" and self.dedicated is None:
            raise ActionFailed("this gateway cannot start dedicated workers (it runs without `up`)")
        return wanted

    async def _mode_of(self, agent: Agent[Any, Any]) -> Mode:
        """A deploy's mode when none is asked for: dedicated when the agent says so
        (``execution_mode``) or its config or a tenant's override does (``mode``:
        those tasks run only on the agent's own workers, so it needs them)."""
        if agent.execution_mode == "dedicated" or await wants_dedicated(self.js, agent.key):
            return "dedicated"
        return "pool"

    def _deployable(self, state: State, agent: str, version: str) -> None:
        if state not in _DEPLOYABLE:
            raise IllegalTransition(state, State.DEPLOYING)
        if state != State.CREATED and (problem := self._invalid(agent, version)):
            raise ActionFailed(f"{agent} {version} cannot be deployed: {problem}")

    # ---- the actions ---------------------------------------------------------

    async def _deploy(self, step: _Steps, mode: Mode, target: _Target, *, migrate: bool = True) -> None:
        out = step.out
        if out.state in _LIVE:
            out.detail = f"already {out.state.value}"
            return
        if out.state not in _DEPLOYABLE:
            raise IllegalTransition(out.state, State.DEPLOYING)
        problem = None if target.package_dir else self._invalid(out.agent, out.version)
        if out.state == State.CREATED:
            await step.to(State.VALIDATING)
            if problem:
                await step.to(State.FAILED, problem)
                return
            await step.to(State.VALIDATED)
        elif problem:
            raise ActionFailed(f"{out.agent} {out.version} cannot be deployed: {problem}")
        agent = target.agent
        await step.to(State.DEPLOYING)
        try:
            cfg = queue_config(agent)  # its resilience block's retries, as the workers' lanes
            for priority in cfg.priorities:
                await ensure_lane(self.js, cfg, priority)
        except Exception as exc:
            await step.to(State.FAILED, f"its queue lanes could not be made: {exc}")
            return
        if migrate and (failure := await self._migrate_up(target)):
            await step.to(State.FAILED, failure)
            return
        if mode == "dedicated":
            failure = await self._start_dedicated(target)
            if failure:
                await step.to(State.FAILED, failure)
                return
        await step.to(State.WARMING_UP)
        failure = await _warm_up(agent)
        if failure:
            await step.to(State.FAILED, failure)
            await self._stop_dedicated_unit(target.unit, mode)  # a failed version keeps no processes
            return
        await step.to(State.RUNNING)
        out.detail = "running: workers take its tasks"

    async def _rollback(self, step: _Steps, mode: Mode, drain_timeout_s: float) -> None:
        """Back to ``step``'s (earlier) version from the live one: the live version's
        ``down`` hook, then the earlier one deployed (its ``up`` hook not run), then the
        live one retired. A failed hook or deploy leaves the live version running."""
        out = step.out
        current = await self._rolled_back_from(out.agent, await self.manager.version(out.agent, out.version))
        failure = await self._migrate(current, "down", current.version, out.version)
        if failure:
            raise ActionFailed(f"rollback of {out.agent} from {current.version} to {out.version}: {failure}")
        await self._deploy(step, mode, await self._target(out.agent, out.version), migrate=False)
        if out.state not in _LIVE:
            return  # FAILED with the reason; what was live still is
        retired = Outcome(out.agent, current.version, Action.RETIRE, current.state)
        await self._retire(
            _Steps(self.manager, retired, step.actor, step.reason, step.checkpoint), drain_timeout_s
        )
        await self._stop_dedicated(current)
        out.transitions.extend(retired.transitions)
        out.detail = f"rolled back from {current.version} ({retired.state.value})"

    async def _rolled_back_from(self, agent: str, to: VersionRecord) -> VersionRecord:
        """The live version a rollback to ``to`` leaves (:class:`ActionFailed` if none)."""
        live = [v for v in await self.manager.versions(agent) if v.state in _LIVE and v.version != to.version]
        if not live:
            raise ActionFailed(f"{agent} has no live version other than {to.version} to roll back from")
        return live[0]

    async def _migrate_up(self, target: _Target) -> str | None:
        """Run an installed version's ``up`` hook from the agent's live version (or none)."""
        if target.package_dir is None:
            return None
        versions = await self.manager.versions(target.agent.key)
        live = [v.version for v in versions if v.state in _LIVE and v.version != target.agent.version]
        record = next(v for v in versions if v.version == target.agent.version)  # registered by the deploy
        return await self._migrate(record, "up", live[0] if live else None, target.agent.version)

    async def _migrate(
        self, record: VersionRecord, direction: Direction, old: str | None, new: str
    ) -> str | None:
        """Run ``record``'s ``direction`` hook if it is an installed version that has one."""
        installed = await get_installed(self.manager.pool, record.agent, record.version)
        if installed is None or self.installer is None:
            return None
        spec = PackSpec.model_validate(installed.spec)
        if (spec.migrations.up if direction == "up" else spec.migrations.down) is None:
            return None
        started = time.monotonic()
        failure = await run_hook(await self.installer.local_dir(installed), spec, direction, old, new)
        log.info("%s %s: migration %s from %s to %s %s in %.1f s", record.agent, record.version, direction,
                 old, new, "failed" if failure else "ran", time.monotonic() - started)  # fmt: skip
        return failure

    async def _retire(self, step: _Steps, drain_timeout_s: float) -> None:
        out = step.out
        if out.state in _LIVE | {State.DRAINING}:
            await self._stop_gracefully(step, drain_timeout_s, then=State.RETIRED)
            return
        await step.to(State.RETIRED)
        out.detail = "retired"

    async def _stop_gracefully(self, step: _Steps, drain_timeout_s: float, then: State) -> None:
        """Drain, wait for what runs; ``then`` if it finished in time, else force-stop."""
        out = step.out
        if out.state in _LIVE:
            await step.to(State.DRAINING)
        if await self._wait_drained(out, drain_timeout_s, step.checkpoint):
            await step.to(then)
            return
        running = sum(h.running + h.held for h in out.held)
        await step.to(State.FORCE_STOPPED, f"not drained within {drain_timeout_s:g} s")
        detail = f"not drained within {drain_timeout_s:g} s: force-stopped, {running} task(s) handed back"
        if then != State.FORCE_STOPPED:
            await step.to(then)
        out.detail = detail

    async def _wait_drained(self, out: Outcome, timeout_s: float, checkpoint: Checkpoint) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            out.held = [h for h in await held_tasks(self.nc, out.agent) if h.running or h.held]
            if not out.held:
                out.detail = "drained: no worker holds any of its tasks"
                return True
            running = sum(h.running + h.held for h in out.held)
            if time.monotonic() >= deadline:
                out.detail = f"not drained within {timeout_s:g} s: {running} task(s) still held"
                return False
            out.detail = f"waiting for {running} task(s) to finish ({deadline - time.monotonic():.0f} s left)"
            await checkpoint(out, True)
            await asyncio.sleep(self.poll_s)

    # ---- dedicated workers ---------------------------------------------------

    async def _start_dedicated(self, target: _Target) -> str | None:
        """Start the agent's own workers and wait until each answers; why not, or None."""
        assert self.dedicated is not None
        agent, unit = target.agent, target.unit
        count = max(1, agent.dedicated_workers)
        await self.dedicated.start(unit, count, target.package_dir)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            answers = [h for h in await held_tasks(self.nc, agent.key)
                       if h.role == "dedicated" and h.version in (None, agent.version)]  # fmt: skip
            if len(answers) >= count:
                return None
            if not self.dedicated.pids(unit) and self.dedicated.crashes.get(unit):
                break  # they keep dying: the supervisor says why
            await asyncio.sleep(self.poll_s)
        await self.dedicated.stop(unit)
        crashed = self.dedicated.last_error.get(unit)
        if crashed:
            return f"its dedicated workers did not start: {crashed}"
        return f"its {count} dedicated worker(s) did not answer within {self.start_timeout_s:g} s"

    async def _stop_dedicated(self, record: VersionRecord) -> None:
        installed = await get_installed(self.manager.pool, record.agent, record.version)
        unit = f"{record.agent}@{record.version}" if installed is not None else record.agent
        await self._stop_dedicated_unit(unit, record.mode)

    async def _stop_dedicated_unit(self, unit: str, mode: Mode) -> None:
        if mode == "dedicated" and self.dedicated is not None:
            await self.dedicated.stop(unit)

    async def resume_dedicated(self) -> None:
        """Start again the dedicated workers of every live dedicated version (after the
        gateway that ran them restarted: a RUNNING version keeps its tasks queued until
        its processes answer). One that cannot start is FAILED with the reason."""
        if self.dedicated is None:
            return
        async with self.manager.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT agent_key, version FROM agent_versions WHERE mode = 'dedicated'"
                " AND state IN ('running', 'degraded') ORDER BY agent_key, version"
            )
        for agent, version in rows:
            try:
                target = await self._target(agent, version)
            except AgentError:  # neither loaded here nor installed: another gateway's to serve
                continue
            if target.package_dir is None and self._invalid(agent, version):
                continue  # this gateway loads another version of it
            answers = await held_tasks(self.nc, agent)
            if any(h.role == "dedicated" and h.version in (None, version) for h in answers):
                continue  # its workers run (another gateway's): not twice
            try:
                failure = await self._start_dedicated(target)
            except AgentError as exc:
                failure = str(exc)
            if failure:
                log.error("%s %s: its dedicated workers did not start again: %s", agent, version, failure)
                why = f"restart of its dedicated workers: {failure}"
                with contextlib.suppress(AgentError):
                    await self.manager.transition(agent, version, State.FAILED, actor="gateway", reason=why)
            else:
                log.info("%s %s: its dedicated workers started again", agent, version)

    async def crashed(self, unit: str, why: str) -> None:
        """The supervisor gave up on a unit of dedicated workers: its live version FAILED."""
        agent, _, version = unit.partition("@")
        try:
            record = await self._current(agent, version or None)
            await self.manager.transition(agent, record.version, State.FAILED, actor="supervisor", reason=why)
        except AgentError as exc:  # nothing live to fail (retired meanwhile): say so only
            log.warning("dedicated workers of %s gave up (%s); no transition: %s", agent, why, exc)

    # ---- helpers -------------------------------------------------------------

    async def _target(self, agent: str, version: str | None) -> _Target:
        """What a deploy of ``agent`` ``version`` serves: an installed version of that
        number (or, with no version asked and none loaded here, the newest installed),
        else the agent loaded in this process."""
        if self.installer is not None and (version is not None or agent not in self.registry):
            if version is not None:
                row = await get_installed(self.manager.pool, agent, version)
            else:
                rows = await list_installed(self.manager.pool, agent)
                row = max(rows, key=lambda r: sort_key(parse_version(r.version))) if rows else None
            if row is not None:
                return _Target(packaged_agent(row), await self.installer.local_dir(row))
        return _Target(self._loaded(agent))

    def _loaded(self, agent: str) -> Agent[Any, Any]:
        if agent not in self.registry:
            raise ActionFailed(
                f"agent {agent!r} is not loaded in this process (AF_AGENTS, --agent or an entry point)"
            )
        return self.registry.get(agent)

    def _invalid(self, agent: str, version: str) -> str | None:
        """Why ``agent`` ``version`` cannot run here, or None."""
        if agent not in self.registry:
            return "not loaded in this process (AF_AGENTS, --agent or an entry point)"
        loaded = self.registry.get(agent)
        if loaded.version != version:
            return f"this process has version {loaded.version}, not {version}"
        try:
            loaded.describe()  # both schemas render
        except Exception as exc:
            return f"its input or output model has no JSON schema: {exc}"
        return None

    async def _current(self, agent: str, version: str | None) -> VersionRecord:
        if version is not None:
            return await self.manager.version(agent, version)
        versions = await self.manager.versions(agent)
        if not versions:
            raise ActionFailed(f"agent {agent!r} has no lifecycle record; deploy it first")
        live = [v for v in versions if v.state in _LIVE | {State.DRAINING}]
        return (live or versions)[0]


class _Steps:
    """Makes an action's transitions one by one, keeping its outcome current."""

    def __init__(
        self, manager: LifecycleManager, out: Outcome, actor: str, reason: str | None, checkpoint: Checkpoint
    ) -> None:
        self.manager, self.out, self.actor, self.reason = manager, out, actor, reason
        self.checkpoint = checkpoint

    async def to(self, state: State, why: str | None = None) -> None:
        reason = f"{self.out.action.value}: {why or self.reason or 'asked'}"
        done = await self.manager.transition(self.out.agent, self.out.version, state, actor=self.actor,
                                             reason=reason)  # fmt: skip
        self.out.transitions.append(done)
        self.out.state = state
        if why:
            self.out.detail = why
        await self.checkpoint(self.out, False)


async def _warm_up(agent: Agent[Any, Any]) -> str | None:
    """Run the agent's warm-up within its timeout; why it failed, or None."""
    try:
        async with asyncio.timeout(agent.warm_up_timeout_s):
            await agent.warm_up()
    except TimeoutError:
        return f"warm-up did not finish within {agent.warm_up_timeout_s:g} s"
    except Exception as exc:
        return f"warm-up failed: {type(exc).__name__}: {exc}"
    return None

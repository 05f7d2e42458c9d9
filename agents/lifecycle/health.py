"""Health probes: an agent's startup, readiness and liveness probes, run in each
worker that serves it (:class:`HealthProbes`, attached to the worker).

* **startup**: until it first passes, the worker takes none of the agent's tasks;
  the other probes start once it has.
* **readiness**: while it fails, the worker takes none of the agent's tasks and
  hands back what it holds unstarted (running tasks finish); other workers,
  where the agent is ready, go on. This is a per-worker decision, made where the
  probe runs; the fleet-wide one is the lifecycle's dispatch gate.
* **liveness**: reported only: the gateway's ``GET /api/v1/agents/{key}/health``
  (and ``agent-factory agent status``) call the agent degraded when a worker
  says it is not alive.

Only probes an agent overrides run (an agent with none costs nothing). Each
runs every ``probe_interval_s`` within ``probe_timeout_s``; ``False``, an
exception or the timeout is a failure, with the error kept. Workers answer
with their probes' last results when asked what they hold
(:func:`mesh.queue.gates.held_tasks`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from agents.contract import Agent
from mesh.queue.gates import HeldBy, Probes
from mesh.queue.worker import TaskWorker
from mesh.stopping import cancel_within

__all__ = ["HealthProbes", "aggregate", "declared"]

log = logging.getLogger(__name__)

_KINDS = ("startup_probe", "readiness_probe", "liveness_probe")
STOP_WITHIN_S = 5.0


def declared(agent: Agent[Any, Any]) -> set[str]:
    """The probes ``agent`` overrides (the base class's always pass and never run)."""
    return {kind for kind in _KINDS if getattr(type(agent), kind) is not getattr(Agent, kind)}


class HealthProbes:
    """Runs the declared probes of ``agents`` and tells ``worker`` (:meth:`TaskWorker.set_probes`)."""

    def __init__(self, worker: TaskWorker, agents: Iterable[Agent[Any, Any]]) -> None:
        self.worker = worker
        self.agents = [(agent, declared(agent)) for agent in agents]
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for agent, kinds in self.agents:
            if not kinds:
                continue
            # Closed until the startup probe passes: set before the worker's first pull.
            self.worker.set_probes(agent.key, _initial(kinds))
            self._loops.append(asyncio.create_task(self._probe(agent, kinds), name=f"probes-{agent.key}"))

    async def stop(self) -> None:
        # A probe is the agent's code: bounded, as every stop (mesh.stopping).
        await cancel_within(self._loops, asyncio.get_running_loop().time() + STOP_WITHIN_S)
        self._loops.clear()

    async def _probe(self, agent: Agent[Any, Any], kinds: set[str]) -> None:
        state = _initial(kinds)
        while True:
            error = None
            if state.started is False:
                passed, error = await _run(agent.startup_probe, agent.probe_timeout_s)
                state = state.model_copy(update={"started": passed})
            if state.started is not False:
                if "readiness_probe" in kinds:
                    passed, failed = await _run(agent.readiness_probe, agent.probe_timeout_s)
                    state, error = state.model_copy(update={"ready": passed}), error or failed
                if "liveness_probe" in kinds:
                    passed, failed = await _run(agent.liveness_probe, agent.probe_timeout_s)
                    state, error = state.model_copy(update={"alive": passed}), error or failed
            state = state.model_copy(update={"error": error, "checked_at": time.time()})
            before = self.worker.probes.get(agent.key)
            if before is None or (before.ready, before.started, before.alive) != (
                state.ready,
                state.started,
                state.alive,
            ):
                shown = state.model_dump(exclude_none=True)
                log.info("%s probes in %s: %s", agent.key, self.worker.name, shown)
            self.worker.set_probes(agent.key, state)
            await asyncio.sleep(agent.probe_interval_s)


def _initial(kinds: set[str]) -> Probes:
    return Probes(
        started=False if "startup_probe" in kinds else None,
        ready=False if "readiness_probe" in kinds else None,
        alive=None,
    )


async def _run(probe: Callable[[], Awaitable[bool]], timeout_s: float) -> tuple[bool, str | None]:
    try:
        async with asyncio.timeout(timeout_s):
            passed = await probe()
    except TimeoutError:
        return False, f"{probe.__name__} did not answer within {timeout_s:g} s"
    except Exception as exc:
        return False, f"{probe.__name__}: {type(exc).__name__}: {exc}"
    return (True, None) if passed else (False, f"{probe.__name__} said no")


def aggregate(workers: list[HeldBy]) -> str:
    """One word for an agent's health over the workers that answered: ``unknown``
    (none did), ``ready``, ``degraded`` (some worker not ready, not started or not
    alive, but one ready) or ``not_ready`` (no worker ready)."""
    if not workers:
        return "unknown"

    def ready(p: Probes) -> bool:
        return p.ready is not False and p.started is not False

    readies = [ready(w.probes) for w in workers]
    if not any(readies):
        return "not_ready"
    if all(readies) and all(w.probes.alive is not False for w in workers):
        return "ready"
    return "degraded"

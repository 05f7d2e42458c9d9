"""Dedicated mode: an agent served by worker processes of its own, started and
stopped by the lifecycle, restarted when they crash.

An agent deployed in dedicated mode gets ``count`` worker processes (the
command the gateway gives, e.g. ``agent-factory worker --agents KEY --role
dedicated``); its dispatch gate opens to dedicated workers only, so the shared
pools leave its tasks alone. A process that exits while it should run is
started again after a pause that doubles each time (1 s, 2 s, 4 s … at most
30 s); the sixth crash within five minutes gives up: the supervisor reports
the last lines the process wrote to stderr, and the lifecycle moves the version
to FAILED with them. Tasks the crashed process held come back by their ack
wait (or at once, if it handed them back while stopping): nothing is lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.embedded import parent_death_signal
from mesh.stopping import cancel_within

__all__ = ["DedicatedWorkers", "RestartPolicy"]

log = logging.getLogger(__name__)

Command = Callable[[str, int, Path | None], list[str]]  # (unit, index, package dir) -> argv
OnFailed = Callable[[str, str], Awaitable[None]]  # (unit, why)


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff between restarts, and when to give up."""

    base_s: float = 1.0
    cap_s: float = 30.0
    max_restarts: int = 5  # within window_s; one more crash gives up
    window_s: float = 300.0

    def pause(self, restarts: int) -> float:
        """The pause before restart number ``restarts`` (1-based)."""
        return float(min(self.cap_s, self.base_s * 2 ** (restarts - 1)))

    def gives_up(self, crashes: list[float], now: float) -> bool:
        """After ``crashes`` (monotonic times), is one more restart too many?"""
        recent = [t for t in crashes if now - t <= self.window_s]
        return len(recent) > self.max_restarts


@dataclass
class _Process:
    agent: str
    index: int
    proc: asyncio.subprocess.Process
    stderr: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=20))
    reader: asyncio.Task[None] | None = None


class DedicatedWorkers:
    """Starts, supervises and stops the dedicated worker processes of agents.

    Processes are grouped by *unit*: an agent's key for the version its gateway
    loads, ``key@version`` for a version installed from a package (whose
    processes start in the package's directory, so versions never share one)."""

    def __init__(
        self, command: Command, on_failed: OnFailed, *, env: dict[str, str] | None = None,
        policy: RestartPolicy | None = None, stop_grace_s: float = 40.0,
    ) -> None:  # fmt: skip
        self.command, self.on_failed = command, on_failed
        self.env = env
        self.policy = policy or RestartPolicy()
        self.stop_grace_s = stop_grace_s  # SIGTERM (the worker drains) → this long → SIGKILL
        self._procs: dict[str, list[_Process]] = {}
        self._supervisors: dict[str, asyncio.Task[None]] = {}
        self._dirs: dict[str, Path | None] = {}  # per unit: its package's directory
        self.crashes: dict[str, list[float]] = {}
        self.last_error: dict[str, str] = {}  # per agent: how its latest process ended

    def pids(self, agent: str) -> list[int]:
        return [p.proc.pid for p in self._procs.get(agent, []) if p.proc.returncode is None]

    async def start(self, agent: str, count: int, package_dir: Path | None = None) -> None:
        """Start ``count`` processes for unit ``agent`` (its earlier ones are stopped
        first), in ``package_dir`` when its code is an installed package."""
        await self.stop(agent)
        self._dirs[agent] = package_dir
        self._procs[agent] = [await self._spawn(agent, i) for i in range(count)]
        self.crashes[agent] = []
        self._supervisors[agent] = asyncio.create_task(self._supervise(agent), name=f"dedicated-{agent}")

    async def stop(self, agent: str) -> None:
        """Stop ``agent``'s processes: SIGTERM (each drains), SIGKILL after the grace."""
        supervisor = self._supervisors.pop(agent, None)
        if supervisor is not None:
            await cancel_within([supervisor], asyncio.get_running_loop().time() + 5.0)
        procs = self._procs.pop(agent, [])
        await asyncio.gather(*(self._end(p) for p in procs))

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(agent) for agent in list(self._procs)))

    async def _spawn(self, agent: str, index: int) -> _Process:
        package_dir = self._dirs.get(agent)
        proc = await asyncio.create_subprocess_exec(
            *self.command(agent, index, package_dir), env=self.env, cwd=package_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            preexec_fn=parent_death_signal(signal.SIGTERM),  # none outlives the gateway
        )  # fmt: skip
        own = _Process(agent, index, proc)
        own.reader = asyncio.create_task(_keep_tail(proc, own.stderr))
        log.info("dedicated worker %d of %s started (pid %d)", index, agent, proc.pid)
        return own

    async def _supervise(self, agent: str) -> None:
        while True:
            procs = self._procs.get(agent, [])
            waits = {asyncio.ensure_future(p.proc.wait()): p for p in procs}
            if not waits:
                return
            try:
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in waits:
                    if not f.done():
                        f.cancel()
            for f in done:
                dead = waits[f]
                if dead.reader is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(dead.reader, 1.0)  # its last words
                crashes = self.crashes.setdefault(agent, [])
                crashes.append(time.monotonic())
                last = " | ".join(list(dead.stderr)[-3:]) or "(nothing on stderr)"
                why = f"dedicated worker {dead.index} exited with code {dead.proc.returncode}: {last}"
                self.last_error[agent] = why
                if self.policy.gives_up(crashes, time.monotonic()):
                    log.error("%s: %s; gave up after %d restarts", agent, why, self.policy.max_restarts)
                    procs_left = self._procs.pop(agent, [])
                    self._supervisors.pop(agent, None)
                    await asyncio.gather(*(self._end(p) for p in procs_left))
                    await self.on_failed(agent, f"crashed {len(crashes)} times: {why}")
                    return
                pause = self.policy.pause(len(crashes))
                log.warning("%s: %s; restarting in %g s", agent, why, pause)
                await asyncio.sleep(pause)
                self._procs[agent] = [p for p in self._procs.get(agent, []) if p is not dead]
                self._procs[agent].append(await self._spawn(agent, dead.index))

    async def _end(self, p: _Process) -> None:
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(p.proc.wait(), self.stop_grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
                await p.proc.wait()
        if p.reader is not None:
            p.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await p.reader


async def _keep_tail(proc: asyncio.subprocess.Process, tail: collections.deque[str]) -> None:
    assert proc.stderr is not None
    async for line in proc.stderr:
        text = line.decode(errors="replace").rstrip()
        if text:
            tail.append(text[:500])

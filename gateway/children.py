"""Child processes that are restarted when they die: `up`'s worker pools and stream
processors, and ``agent-factory processors``'s processors.

Each child is a named command. :meth:`Children.start` spawns them all;
:meth:`Children.supervise` restarts one that exits (after ``restart_pause_s``,
so a crash loop is not a storm) until :meth:`Children.terminate` asks them to
stop (SIGTERM: a worker drains, a processor commits), and :meth:`Children.kill`
ends what is left. Every child gets SIGTERM if its parent dies
(``PR_SET_PDEATHSIG``), so none outlives a parent killed -9.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mesh.embedded import parent_death_signal

__all__ = ["Child", "Children"]


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


@dataclass
class Children:
    say: Callable[[str], None]
    restart_pause_s: float = 1.0
    children: list[Child] = field(default_factory=list)
    _stopping: bool = False

    def add(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.children.append(Child(name, list(argv), dict(env)))

    def named(self, prefix: str) -> list[Child]:
        return [c for c in self.children if c.name.startswith(prefix)]

    @property
    def running(self) -> list[asyncio.subprocess.Process]:
        return [c.proc for c in self.children if c.proc is not None and c.proc.returncode is None]

    async def start(self) -> None:
        for child in self.children:
            await self._spawn(child)

    async def _spawn(self, child: Child) -> None:
        child.proc = await asyncio.create_subprocess_exec(
            *child.argv, env=dict(child.env), stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=parent_death_signal(signal.SIGTERM),  # stops as on Ctrl-C if its parent dies
        )  # fmt: skip

    async def supervise(self) -> None:
        """Restart a child that exits, until :meth:`terminate` (cancel it to stop supervising)."""
        while not self._stopping and self.children:
            waits = {asyncio.ensure_future(c.proc.wait()): c for c in self.children if c.proc is not None}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for f in pending:
                f.cancel()
            if self._stopping:
                return
            for f in done:
                child = waits[f]
                pause = self.restart_pause_s
                self.say(f"{child.name} exited with code {f.result()}; restarting in {pause:g} s")
                await asyncio.sleep(self.restart_pause_s)
                if self._stopping:
                    return
                child.restarts += 1
                await self._spawn(child)

    async def terminate(self, children: Sequence[Child] | None = None) -> None:
        """SIGTERM ``children`` (default all) and wait for them to exit."""
        self._stopping = True
        chosen = self.children if children is None else children
        procs = [c.proc for c in chosen if c.proc is not None]
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(proc.wait() for proc in procs))

    async def kill(self, within_s: float = 5.0) -> None:
        """SIGKILL every child still running; wait at most ``within_s`` for them."""
        self._stopping = True
        procs = self.running
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), within_s)

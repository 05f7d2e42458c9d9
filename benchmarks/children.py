"""The benchmark's child processes: ``python -m MODULE ROLE CLIENT URL N``, each
driven by lines on its stdin and answering by lines on its stdout.

What the lines say is the module's protocol (:mod:`benchmarks.two_processes`,
:mod:`benchmarks.scaling`); this module starts the children, waits for each
to say ``ready``, reads their answers with a deadline, and on exit tells them
``exit`` and checks every one ended with status 0 (killing any that hangs).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

__all__ = ["Child", "children"]


@dataclass
class Child:
    role: str
    proc: asyncio.subprocess.Process

    async def tell(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def answer(self, word: str, timeout: float) -> list[str]:
        """The next line, which must start with ``word``; its other fields."""
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().split()
        if line[:1] != [word]:
            raise RuntimeError(f"bench {self.role}: expected {word!r}, got {' '.join(line)!r}")
        return line[1:]


@contextlib.asynccontextmanager
async def children(
    module: str, url: str, n: int, roles: Sequence[tuple[str, str]]
) -> AsyncIterator[list[Child]]:
    """Start one process of ``module`` per (role, client), return once all said
    "ready"; on exit tell them to stop and check they ended well."""
    started: list[Child] = []
    try:
        for role, client in roles:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", module, role, client, url, str(n),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            started.append(Child(f"{role} ({client})", proc))
        for child in started:
            await child.answer("ready", 60)
        yield started
    finally:
        failed = await asyncio.gather(*(_stop(child) for child in started))
    if any(failed):
        raise RuntimeError(f"bench processes failed: {', '.join(f for f in failed if f)}")


async def _stop(child: Child) -> str | None:
    """Ask ``child`` to exit; a description of how it failed, or None."""
    with contextlib.suppress(ConnectionError):
        await child.tell("exit")
    try:
        code = await asyncio.wait_for(child.proc.wait(), 30)
    except TimeoutError:
        child.proc.kill()
        await child.proc.wait()
        return f"{child.role} did not exit"
    return None if code == 0 else f"{child.role} exited with {code}"

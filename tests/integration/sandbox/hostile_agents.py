# ruff: noqa: ASYNC222, ASYNC230, ASYNC251
# (hostile on purpose: they block, fork, wait and sleep inside run)
"""Agents that attack their sandbox, loaded by the tests' template (``hostile_agents:ForkBomb``).

Each takes a bound in its input (``None``: unbounded, the real attack), so a
test can first prove containment on a self-limiting variant.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from pydantic import BaseModel

from agents.contract import Agent, RunContext


class Bound(BaseModel):
    limit: int | None = None  # forks, MiB, bytes... (None: no limit of its own)
    seconds: float = 30.0  # the attack gives up after this long
    port: int = 0


class Done(BaseModel):
    model_config = {"extra": "allow"}

    done: Any = None


class _Hostile(Agent[Bound, Done]):
    Input = Bound
    Output = Done


class ForkBomb(_Hostile):
    """Every process forks as fast as it can; the first one gives up after ``seconds``
    (raising the fork's error), the others keep trying until killed."""

    key = "fork-bomb"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        first, forks, end = os.getpid(), 0, time.monotonic() + input.seconds
        while input.limit is None or forks < input.limit:
            try:
                os.fork()
                forks += 1
            except OSError:
                if os.getpid() == first and time.monotonic() > end:
                    raise
        while os.getpid() != first:  # a bounded bomb's children wait to be killed
            time.sleep(1)
        return Done(done=forks)


class MemoryHog(_Hostile):
    """Allocates (and touches) 8 MiB at a time, up to ``limit`` MiB."""

    key = "memory-hog"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        held = []
        while input.limit is None or len(held) * 8 < input.limit:
            held.append(bytearray(8 * 1024 * 1024))
        return Done(done=len(held) * 8)


class Spinner(_Hostile):
    """Burns CPU until ``seconds`` pass (an infinite loop when ``seconds`` exceeds its limits)."""

    key = "spinner"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        end, n = time.monotonic() + input.seconds, 0
        while time.monotonic() < end:
            n += 1
        return Done(done=n)


class DiskFiller(_Hostile):
    """Writes ``limit`` bytes (10 GB in the test) to one file in its working directory."""

    key = "disk-filler"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        chunk, written = b"\0" * (1 << 20), 0
        with open("big.bin", "wb", buffering=0) as f:
            while input.limit is None or written < input.limit:
                written += f.write(chunk)
        return Done(done=written)


class TermIgnorer(_Hostile):
    """Ignores SIGTERM and sleeps for ``seconds``."""

    key = "term-ignorer"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        end = time.monotonic() + input.seconds
        while time.monotonic() < end:
            time.sleep(0.05)
        return Done(done=True)


class OrphanMaker(_Hostile):
    """Double-forks ``limit`` orphans in sessions of their own, holding none of its
    descriptors, that sleep for ``seconds``; returns their pids at once."""

    key = "orphan-maker"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        pids = []
        for _ in range(input.limit or 1):
            r, w = os.pipe()
            if os.fork() == 0:  # the middle process: start the orphan, tell its pid, die
                os.setsid()
                pid = os.fork()
                if pid == 0:  # a proper daemon: no descriptor of its parent's kept
                    os.closerange(0, 1 << 16)
                    time.sleep(input.seconds)
                    os._exit(0)
                os.write(w, str(pid).encode())
                os._exit(0)
            os.close(w)
            told = b""
            while chunk := os.read(r, 32):  # EOF: the middle exited and the orphan closed everything
                told += chunk
            pids.append(int(told))
            os.close(r)
            os.wait()
        return Done(done=pids)


class Connector(_Hostile):
    """Opens a TCP connection to 127.0.0.1:``port``."""

    key = "connector"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        with socket.create_connection(("127.0.0.1", input.port), timeout=2):
            return Done(done="connected")


class Printer(_Hostile):
    """Writes ``limit`` bytes to stdout and a line to stderr, and names its environment."""

    key = "printer"

    async def run(self, input: Bound, ctx: RunContext) -> Done:
        os.write(1, b"x" * (input.limit or 0))
        os.write(2, b"to stderr\n")
        return Done(done=sorted(os.environ), cwd=os.getcwd(), stdin=os.read(0, 10).decode())

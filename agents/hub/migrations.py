"""Running an installed version's migration hooks (``migrations:`` in its
``agent.pack.yaml``): ``up`` when it is deployed over a live version, ``down``
when it is rolled back to an earlier one.

A hook runs in a child interpreter started in the version's directory
(``python -P``: nothing there shadows the platform's modules), with the version's
code first on its path and its requirements' environment last, as its workers
have them; with the workers' privileges and environment (network included: a
migration usually changes a store the agent uses), never inside the gateway.
It is given ``(from_version, to_version)``; it may be sync or async. It
succeeds by returning within ``migrations.timeout_s``; raising, exiting or the
timeout fails it, with the last lines it wrote to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Final, Literal

from agents.packaging.environment import env_dir
from agents.packaging.spec import PackSpec

__all__ = ["Direction", "run_hook"]

Direction = Literal["up", "down"]
_TAIL_LINES: Final = 5

_CHILD: Final = """
import asyncio, importlib, inspect, sys
code, environment, entry, old, new = sys.argv[1:6]
sys.path.insert(0, code)
if environment:
    sys.path.append(environment)
module, _, name = entry.partition(":")
hook = getattr(importlib.import_module(module), name, None)
if hook is None:
    sys.exit(f"module {module!r} has no {name!r}")
done = hook(old or None, new)
if inspect.isawaitable(done):
    asyncio.run(done)
"""


async def run_hook(
    package_dir: Path, spec: PackSpec, direction: Direction, from_version: str | None, to_version: str
) -> str | None:
    """Run ``spec``'s ``direction`` hook, if it has one: why it failed, or None."""
    entry = spec.migrations.up if direction == "up" else spec.migrations.down
    if entry is None:
        return None
    environment = env_dir(package_dir)
    extra = str(environment) if environment.is_dir() else ""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", _CHILD, str(package_dir), extra, entry, from_version or "", to_version,
        cwd=package_dir, env=dict(os.environ), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), spec.migrations.timeout_s)
    except TimeoutError:
        await _kill(proc)
        return f"migration {direction} ({entry}) did not finish within {spec.migrations.timeout_s:g} s"
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    if proc.returncode != 0:
        said = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        return f"migration {direction} ({entry}) failed: " + (" | ".join(said[-_TAIL_LINES:]) or "no output")
    return None


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """The hook, and whatever it started (its own session)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()

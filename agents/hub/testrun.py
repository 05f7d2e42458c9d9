"""A pack's own tests, run confined before the hub accepts it.

``pytest`` runs in a child process (started through :mod:`agents.hub.confined`, which
confines itself and then execs pytest) with the pack's directory as its working directory and
only entry on ``PYTHONPATH`` beside the platform (so the pack's tests import its code
and :mod:`agents` to test it against). The child is confined the way a sandboxed run
is (:mod:`agents.sandbox`): rlimits on memory, CPU time, files and processes; no
network (an empty network namespace, where the host allows one); no new privileges;
killed with its whole process group when it outlives its wall-clock limit or its
parent. Its HOME and TMPDIR are a scratch directory removed after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from agents.packaging import PackagingError
from agents.sandbox import SandboxLimits, detect_levels
from agents.sandbox.limits import rlimits

__all__ = ["PackTestsFailed", "TestRun", "run_pack_tests"]

MiB: Final = 1024 * 1024
OUTPUT_TAIL: Final = 4000  # characters of pytest's output kept with a failure
_NO_TESTS_COLLECTED: Final = 5  # pytest's exit code


class PackTestsFailed(PackagingError):
    """The pack's own tests did not pass (or could not run): it is not accepted."""


@dataclass(frozen=True)
class TestRun:
    __test__ = False  # not a pytest class

    passed: bool
    exit_code: int
    duration_s: float
    summary: str  # pytest's last line
    network: bool  # False: the tests ran without any network


async def run_pack_tests(
    pack_dir: Path,
    *,
    timeout_s: float = 120.0,
    memory_mb: int = 2048,
    raise_on_failure: bool = True,
    extra_path: Sequence[Path] = (),
) -> TestRun:
    """Run ``<pack_dir>/tests`` with pytest, confined; :class:`PackTestsFailed` when a
    test fails, none are collected, or the run outlives ``timeout_s``."""
    if not (pack_dir / "tests").is_dir():
        raise PackTestsFailed("the pack has no tests/ directory: a package is published with its tests")
    levels = detect_levels()
    limits = SandboxLimits(
        timeout_s=timeout_s, cpu_s=max(1, int(timeout_s)), memory_bytes=memory_mb * MiB,
        address_space_bytes=memory_mb * MiB, processes=64, file_size_bytes=64 * MiB,
    )  # fmt: skip
    confinement = json.dumps({"rlimits": rlimits(limits), "no_network": levels.network_namespace})

    with tempfile.TemporaryDirectory(prefix="af-pack-tests-") as scratch:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "TMPDIR": scratch,
            "PYTHONPATH": os.pathsep.join(str(p) for p in (pack_dir, *extra_path)),
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
        }  # fmt: skip
        started = time.monotonic()
        child = await asyncio.create_subprocess_exec(
            # -I: the wrapper ignores PYTHONPATH and the working directory, so a pack's own
            # modules cannot stand in for it; it confines itself, then execs pytest.
            sys.executable, "-I", "-m", "agents.hub.confined", confinement, "--",
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", f"{scratch}/pytest",
            "tests", cwd=pack_dir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout_s):
                output, _ = await child.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            await child.wait()
            raise PackTestsFailed(f"the pack's tests did not finish within {timeout_s:g} s") from None
        finally:
            if child.returncode is None:  # cancelled: never leave the run behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
    text = output.decode(errors="replace").strip()
    code = child.returncode if child.returncode is not None else -1
    summary = text.splitlines()[-1] if text else ""
    took = round(time.monotonic() - started, 2)
    run = TestRun(code == 0, code, took, summary, network=not levels.network_namespace)
    if raise_on_failure and not run.passed:
        why = "no tests were collected" if code == _NO_TESTS_COLLECTED else f"pytest exited with {code}"
        raise PackTestsFailed(f"the pack's own tests did not pass ({why}):\n{text[-OUTPUT_TAIL:]}")
    return run

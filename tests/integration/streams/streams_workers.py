"""Worker runners for the streams tests: in-process (clean stop) and subprocess (SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import faust

HERE = Path(__file__).parent
ROOT = HERE.parents[2]


@contextlib.asynccontextmanager
async def running(app: faust.App, timeout: float = 30.0) -> AsyncIterator[faust.Worker]:
    """Run ``app`` as an in-process worker until the block exits, then stop it within ``timeout`` s."""
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False, stdout=io.StringIO())
    task = asyncio.ensure_future(worker.start())
    try:
        yield worker
    finally:
        try:
            await asyncio.wait_for(worker.stop(), timeout)
        except TimeoutError:
            raise AssertionError(f"the Faust worker did not stop within {timeout}s") from None
        finally:
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


class LoggedProcess:
    """A child process of a test, its output in ``log``: to SIGKILL, or stop with SIGTERM."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> None:
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class WorkerProcess(LoggedProcess):
    """A worker of ``streams_counter_app`` in its own process, to be SIGKILLed."""

    def __init__(self, app_id: str, nats_url: str, log: Path, standby_replicas: int = 0) -> None:
        argv = [sys.executable, str(HERE / "streams_counter_app.py"), app_id, nats_url, str(standby_replicas)]
        super().__init__(argv, log, {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"})

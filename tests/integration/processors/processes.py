"""A stream processor in a process of its own, as `up` runs it: to SIGKILL and restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]


class ProcessorProcess:
    def __init__(self, name: str, nats_url: str, log: Path, *, env: dict[str, str] | None = None) -> None:
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "processors", "--only", name, "--session-timeout", "2"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
            env={**os.environ, "AF_NATS_URL": nats_url, "PYTHONPATH": str(ROOT), **(env or {})},
        )  # fmt: skip

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

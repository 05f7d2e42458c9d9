"""A stream processor in a process of its own, as `up` runs it: to SIGKILL and restart."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.integration.streams.streams_workers import LoggedProcess

ROOT = Path(__file__).parents[3]


class ProcessorProcess(LoggedProcess):
    def __init__(self, name: str, nats_url: str, log: Path, *, env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "gateway.cli", "processors", "--only", name, "--session-timeout", "2"]
        environment = {**os.environ, "AF_NATS_URL": nats_url, "PYTHONPATH": str(ROOT), **(env or {})}
        super().__init__(argv, log, environment, cwd=ROOT)

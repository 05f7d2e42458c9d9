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
        # Its data dir beside its log: where it names its metrics endpoint (not the checkout's).
        environment = {**os.environ, "AF_NATS_URL": nats_url, "PYTHONPATH": str(ROOT),
                       "AF_DATA_DIR": str(log.parent / "af"), **(env or {})}  # fmt: skip
        super().__init__(argv, log, environment, cwd=ROOT)

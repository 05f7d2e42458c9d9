"""Fixtures for the Faust-on-JetStream tests."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The helper modules beside this file are imported by plain name.
sys.path.insert(0, str(Path(__file__).parent))

from streams_workers import WorkerProcess


@pytest.fixture
def app_id() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def worker_processes(tmp_path: Path, nats_url: str) -> Iterator[list[WorkerProcess]]:
    """Factory list: append ``WorkerProcess`` objects; all are stopped at teardown."""
    procs: list[WorkerProcess] = []
    yield procs
    for p in procs:
        p.stop()

"""The exact-count scenario of the streams tests at 100,000 events (CI runs it at 20,000)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from nats.js import JetStreamContext

sys.path.insert(0, str(Path(__file__).parents[1] / "integration" / "streams"))

import test_table_counts as scenario  # a sibling folder's module, found by plain name


@pytest.mark.timeout(900)
async def test_100k_events_are_counted_exactly_per_key_and_per_window(
    nats_url: str, js: JetStreamContext
) -> None:
    await scenario.count_exactly(100_000, nats_url, js, f"t{uuid.uuid4().hex[:10]}", within=600)

"""An enqueue NATS does not answer says "outcome unknown", whichever step went unanswered.

Seen on a cluster (tests/cluster/test_partition.py): a client whose node is
frozen heard a raw ``nats.errors.TimeoutError`` from its idempotency key's
claim, which the gateway turns into a 500, not the 503 "retry with the same
key" of :class:`EnqueueOutcomeUnknown`. Here the one server is frozen
(SIGSTOP) after the producer started, so the first step, the key's claim,
gets no answer.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.embedded import NatsServer
from mesh.errors import EnqueueOutcomeUnknown
from mesh.provision import provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.wire.connection import connect, jetstream
from tests.helpers import eventually, unique


def _stopped(server: NatsServer) -> bool:
    """Every thread of the server is stopped (state T), not only the signal sent."""
    tasks = Path(f"/proc/{server.pid}/task")
    states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
    return all(state == "T" for state in states)


@pytest.fixture
async def frozen_later(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.send_signal(signal.SIGCONT)  # a stopped process cannot exit
        server.stop()


async def test_an_unanswered_key_claim_is_reported_as_an_unknown_outcome(frozen_later: NatsServer) -> None:
    nc = await connect(frozen_later.url, name="unanswered-test")
    try:
        js = await jetstream(nc, timeout=0.5)
        await provision(await jetstream(nc))
        async with TaskQueue(nc, js) as queue:
            frozen_later.send_signal(signal.SIGSTOP)
            # A stop is delivered to each of the server's threads in turn: on a loaded machine
            # one could still answer the claim (seen in CI). Enqueue once it stands still.
            await eventually(lambda: _stopped(frozen_later), 5, "the server stopped")
            with pytest.raises(EnqueueOutcomeUnknown, match="same idempotency key"):
                await queue.enqueue(TaskSpec(agent=unique("unanswered"), input={}, idempotency_key="k-1"))
            frozen_later.send_signal(signal.SIGCONT)
    finally:
        await nc.close()

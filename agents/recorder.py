"""Project streams into PostgreSQL: finished events into ``executions``, run
states into the ``runs`` index.

At-least-once from the stream, idempotent in the table (upserts that only
move a row forward): messages are acked only after the batch is committed,
so a crash replays a batch and changes nothing. Batching keeps the database
off the task hot path.

Two projections, each a :class:`Recorder` with its own durable consumer:

* :data:`EXECUTIONS` (the default): every ``execution.finished`` event of
  ``AF_EVENTS`` into ``executions``, the permanent record of outcomes;
* :data:`RUN_INDEX`: every write to the ``af_runs`` bucket (queued records,
  state writes, and the finished events the server projects into it) into
  ``runs``, which ``GET /api/v1/runs`` lists and filters. It lags the bucket
  by one batch (well under a second when it keeps up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agents.store.executions import record_executions
from agents.store.runs import index_runs
from mesh import names
from mesh.envelope import CONTENT_TYPE, decode
from mesh.errors import DecodeError
from mesh.queue.runs import ExecutionFinished
from mesh.wire.protocol import api_prefix
from mesh.wire.puller import Puller

__all__ = ["EXECUTIONS", "RUN_INDEX", "Projection", "Recorder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Projection:
    """What a :class:`Recorder` reads, and how it writes one batch (returns how
    many messages it recorded; one it cannot read is logged and skipped: it
    stays in its stream)."""

    stream: str
    consumer: str
    filter_subject: str
    write: Callable[[asyncpg.Pool, list[Msg]], Awaitable[int]]


async def _write_executions(pool: asyncpg.Pool, msgs: list[Msg]) -> int:
    events = []
    for msg in msgs:
        try:
            env = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
            events.append(ExecutionFinished.model_validate(env.payload))
        except (DecodeError, ValueError) as exc:
            # It stays in AF_EVENTS (7 days); only the projection skips it.
            log.error("recorder: skipping undecodable event %s: %s", msg.subject, exc)
    await record_executions(pool, events)
    return len(events)


EXECUTIONS = Projection(names.STREAM_EVENTS, names.CONSUMER_RECORDER, names.ALL_FINISHED, _write_executions)
RUN_INDEX = Projection(
    names.kv_stream(names.BUCKET_RUNS),
    names.CONSUMER_RUN_INDEX,
    names.kv_subject(names.BUCKET_RUNS, ">"),
    index_runs,
)


class Recorder:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        batch: int = 256,
        poll_s: float = 1.0,
        projection: Projection = EXECUTIONS,
    ) -> None:
        self.nc, self.js, self.pool, self.batch, self.poll_s = nc, js, pool, batch, poll_s
        self.projection = projection
        self._puller: Puller | None = None
        self._task: asyncio.Task[None] | None = None
        self._holding: list[Msg] = []  # the batch being written, not yet acked
        self.recorded = 0

    async def start(self) -> None:
        p = self.projection
        await self.js.add_consumer(
            p.stream,
            ConsumerConfig(
                durable_name=p.consumer,
                filter_subject=p.filter_subject,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=60,
                max_ack_pending=10_000,
            ),
        )
        self._puller = Puller(self.nc, p.stream, p.consumer, api_prefix(self.js))
        await self._puller.start()
        self._task = asyncio.create_task(self._loop(), name=p.consumer)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop within ``timeout``; events taken but not recorded are handed back
        (nak) at once, not left to the 60 s ack wait."""
        if self._task is not None:
            self._task.cancel()
            # Bounded: a cancel can be lost below us (a reply arriving with it).
            await asyncio.wait([self._task], timeout=timeout)
        leftovers = list(self._holding)
        self._holding = []
        if self._puller is not None:
            leftovers += await self._puller.close(settle_s=self.poll_s + 0.5)
        for msg in leftovers:
            with contextlib.suppress(Exception):  # an acked one refuses: fine
                await msg.nak()

    async def _loop(self) -> None:
        assert self._puller is not None
        while True:
            try:
                msgs = await self._puller.take(self.batch)
                if not msgs:
                    msgs = await self._puller.wait(1, self.poll_s)
                    if not msgs:
                        continue
                    self._holding = msgs
                    msgs += await self._puller.take(self.batch - 1)
                self._holding = msgs
                recorded = await self.projection.write(self.pool, msgs)
                for msg in msgs:
                    await msg.ack()
                self._holding = []
                self.recorded += recorded
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # DB or NATS down: hand the batch back for a retry soon
                log.warning("%s: batch failed, will retry: %s", self.projection.consumer, exc)
                held, self._holding = self._holding, []
                for msg in held:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                await asyncio.sleep(0.5)

"""Project ``execution.finished`` events into PostgreSQL.

At-least-once from the stream, idempotent in the table (``ON CONFLICT
(run_id) DO NOTHING``): events are acked only after the batch is committed,
so a crash replays a batch and changes nothing. Batching keeps the database
off the task hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agents.store.executions import record_executions
from mesh import names
from mesh.envelope import CONTENT_TYPE, decode
from mesh.errors import DecodeError
from mesh.events import ExecutionFinished
from mesh.puller import Puller

__all__ = ["Recorder"]

log = logging.getLogger(__name__)

CONSUMER = "recorder-postgres"


class Recorder:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        pool: asyncpg.Pool,
        batch: int = 256,
        poll_s: float = 1.0,
    ) -> None:
        self.nc, self.js, self.pool, self.batch, self.poll_s = nc, js, pool, batch, poll_s
        self._puller: Puller | None = None
        self._task: asyncio.Task[None] | None = None
        self._holding: list[Msg] = []  # the batch being written, not yet acked
        self.recorded = 0

    async def start(self) -> None:
        await self.js.add_consumer(
            names.STREAM_EVENTS,
            ConsumerConfig(
                durable_name=CONSUMER,
                filter_subject=names.ALL_FINISHED,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=60,
                max_ack_pending=10_000,
            ),
        )
        self._puller = Puller(self.nc, names.STREAM_EVENTS, CONSUMER)
        await self._puller.start()
        self._task = asyncio.create_task(self._loop(), name="recorder")

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
                events = []
                for msg in msgs:
                    try:
                        env = decode(msg.data, (msg.headers or {}).get(CONTENT_TYPE))
                        events.append(ExecutionFinished.model_validate(env.payload))
                    except (DecodeError, ValueError) as exc:
                        # It stays in AF_EVENTS (7 days); only the projection skips it.
                        log.error("recorder: skipping undecodable event %s: %s", msg.subject, exc)
                await record_executions(self.pool, events)
                for msg in msgs:
                    await msg.ack()
                self._holding = []
                self.recorded += len(events)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # DB or NATS down: hand the batch back for a retry soon
                log.warning("recorder: batch failed, will retry: %s", exc)
                held, self._holding = self._holding, []
                for msg in held:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)
                await asyncio.sleep(0.5)

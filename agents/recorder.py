"""Project streams into PostgreSQL: finished events into ``executions``, run
states into the ``runs`` index.

At-least-once from the stream, idempotent in the table (upserts that only
move a row forward): messages are acked only after the batch is committed,
so a crash replays a batch and changes nothing. Batching keeps the database
off the task hot path.

Two projections, each a :class:`Recorder` with its own durable consumer:

* :data:`EXECUTIONS` (the default): every ``execution.finished`` event of
  ``AF_EVENTS`` into ``executions``, the permanent record of outcomes;
* :data:`BILLING`: every billing record (``AF_BILLING``, from the metering
  processor) into ``billing_records``, once per record id;
* :data:`RUN_INDEX`: every write to the ``af_runs`` bucket (queued records,
  state writes, and the finished events the server projects into it) into
  ``runs``, which ``GET /api/v1/runs`` lists and filters. It lags the bucket
  by one batch (well under a second when it keeps up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import Counter
from pydantic import TypeAdapter

from agents.store.billing import record_billing
from agents.store.executions import record_executions
from agents.store.runs import index_runs
from mesh import names
from mesh.envelope import CONTENT_TYPE, decode
from mesh.errors import DecodeError
from mesh.queue.billing import NANO, BillingRecord
from mesh.queue.runs import ExecutionFinished
from mesh.wire.consumer import ConsumerLoop
from mesh.wire.protocol import api_prefix

__all__ = ["BILLING", "COST", "EXECUTIONS", "RUN_INDEX", "Projection", "Recorder"]

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


_BILLING_LIST = TypeAdapter(list[BillingRecord])
# Counted as the recorder writes (at least once: a batch written again after a
# crash counts again; PostgreSQL's billing_records is the exact account).
_BILLED = ["agent", "tenant"]
COST = Counter("af_cost_total", "Priced executions' cost, in their currency", [*_BILLED, "currency"])
CPU = Counter("af_execution_cpu_seconds_total", "CPU time executions used (as metered)", _BILLED)
WALL = Counter("af_execution_wall_seconds_total", "Wall time executions took (as metered)", _BILLED)
TOKENS = Counter("af_execution_tokens_total", "Model tokens executions used", [*_BILLED, "direction"])
NETWORK = Counter("af_execution_network_bytes_total", "Bytes executions sent and received", _BILLED)
WRITTEN = Counter("af_execution_written_bytes_total", "Bytes executions wrote", _BILLED)


def _count(record: BillingRecord) -> None:
    scope = (record.agent, record.tenant)
    COST.labels(*scope, record.currency).inc(record.amount_nano / NANO)
    CPU.labels(*scope).inc(record.cpu_ms / 1000)
    WALL.labels(*scope).inc(record.wall_ms / 1000)
    TOKENS.labels(*scope, "input").inc(record.input_tokens)
    TOKENS.labels(*scope, "output").inc(record.output_tokens)
    NETWORK.labels(*scope).inc(record.bytes_network)
    WRITTEN.labels(*scope).inc(record.bytes_written)


async def _write_billing(pool: asyncpg.Pool, msgs: list[Msg]) -> int:
    """Each message holds the billing records of one batch the metering processor priced."""
    records: list[BillingRecord] = []
    for msg in msgs:
        try:
            records += _BILLING_LIST.validate_json(msg.data)
        except ValueError as exc:  # it stays in AF_BILLING; only the projection skips it
            log.error("recorder: skipping unreadable billing records %s: %s", msg.subject, exc)
    await record_billing(pool, records)
    for record in records:
        _count(record)
    return len(records)


EXECUTIONS = Projection(names.STREAM_EVENTS, names.CONSUMER_RECORDER, names.ALL_FINISHED, _write_executions)
RUN_INDEX = Projection(
    names.kv_stream(names.BUCKET_RUNS),
    names.CONSUMER_RUN_INDEX,
    names.kv_subject(names.BUCKET_RUNS, ">"),
    index_runs,
)
BILLING = Projection(names.STREAM_BILLING, names.CONSUMER_BILLING_RECORDER, ">", _write_billing)


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
        self._loop: ConsumerLoop | None = None
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
        self._loop = ConsumerLoop(
            self.nc, p.stream, p.consumer, self._write, batch=self.batch, idle_s=self.poll_s,
            retry_delay_s=1.0, api_prefix=api_prefix(self.js),
        )  # fmt: skip
        await self._loop.start()

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop within ``timeout``: a batch being written may finish; one cut
        short, and events taken but not handed to it, are handed back (nak) at
        once, not left to the 60 s ack wait."""
        if self._loop is not None:
            await self._loop.stop(asyncio.get_running_loop().time() + timeout)

    async def _write(self, msgs: list[Msg]) -> None:
        """One batch: written, then acked (a crash in between replays it: idempotent)."""
        recorded = await self.projection.write(self.pool, msgs)
        for msg in msgs:
            await msg.ack()
        self.recorded += recorded

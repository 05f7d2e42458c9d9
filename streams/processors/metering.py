"""Metering: every execution priced, aggregated, billed; budgets and quotas decided.

Events (``af-executions``, partitioned by agent) are taken in batches (up to
``batch``, or what came within ``batch_wait_s``); Faust acks a batch's events
only once this module is done with them, so nothing below can be committed
before it was sent. Per event:

* it is priced (:mod:`streams.processors.pricing`);
* table ``metering-usage`` adds it to the entry of (agent, tenant, UTC day):
  counts, cost per resource, quantities, and cost and count per hour of the
  day. **Exactly once**: an agent's events are all in one partition, in
  order, so each entry is written by one owner; the entry keeps the source
  offset it last applied and an event at or below it is skipped. State and
  fence are one value, one changelog record (one per entry changed per
  batch), so a processor SIGKILLed and restarted (or a partition moved)
  re-reads the events after its last commit and counts none of them twice;
* its billing record (``mesh.queue.billing.BillingRecord``, id
  ``bill-<event id>``) goes, with the batch's others in one message, to topic
  ``af-billing`` through the app's producer, which Faust flushes before it
  commits: at least once (a re-processed event sends its record again, with
  the same id; PostgreSQL keeps one row per id).

Every ``flush_interval_s`` (1 s) each replica, from its table:

* writes, for every budget and quota, its partitions' part of the current
  period's spend (or count) to ``af_budgets`` (``partial.<id>.<period>.p<n>``),
  and sums all partitions' parts (a tenant's spend is spread over the
  partitions of its agents);
* alerts at each threshold **once per period**: the alert is a publish to
  ``af.events.budget.alert.<id>.<period>.<pct>`` that the server accepts only
  if that subject has no message yet (``Nats-Expected-Last-Subject-Sequence:
  0``), so replicas and restarts cannot send it twice; ``alerted.<…>`` in
  ``af_budgets`` remembers it past ``AF_EVENTS``'s retention;
* marks a spent hard budget or a used-up quota ``spent.<id>`` (which
  ``TaskQueue.enqueue`` obeys) and removes the mark when the period ends;
* raises a spend-rate anomaly (``af.events.cost.anomaly.agent.<agent>.<hour>``,
  ``af.events.cost.anomaly.tenant.<tenant>.<hour>``; once per scope and hour)
  when an agent's or a tenant's spend in the current hour exceeds
  ``anomaly_multiple`` x its average over the previous ``anomaly_hours``. An agent's
  spend is in one partition; a tenant's is summed over every partition's part
  (``rate.tenant.<tenant>.p<n>`` in ``af_budgets``: the hour, its spend so far and the
  trailing hours' sum, written at most every ``RATE_WRITE_S`` per key when it changed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import faust
from mode import Service
from nats.js import JetStreamContext
from nats.js.api import StreamSource
from nats.js.errors import APIError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_json

from mesh import names
from mesh.errors import WRONG_LAST_SEQUENCE
from mesh.queue.billing import NANO
from mesh.queue.budgets import BUDGET_PREFIX, QUOTA_PREFIX, SPENT_PREFIX, Budget, Period, Quota, Spent
from mesh.queue.runs import ExecutionFinished, RunStatus
from mesh.stopping import cancel_within
from mesh.wire.follow import KeyFollower, raw
from streams import naming
from streams.processors.app import Decisions, ProcessorConfig
from streams.processors.executions import EXECUTIONS_TOPIC, read_finished, traced
from streams.processors.pricing import PriceTable, configured_prices, price
from streams.topics import TopicRegistry

__all__ = ["BILLING_TOPIC", "MeteringSettings", "install", "prepare"]

log = logging.getLogger(__name__)

BILLING_TOPIC = "af-billing"
USAGE_TABLE = "metering-usage"
PARTIAL_PREFIX = "partial."
ALERTED_PREFIX = "alerted."
RATE_PREFIX = "rate."  # rate.tenant.<tenant>.p<n>: a partition's part of a tenant's hourly spend
RATE_WRITE_S = 5.0  # a tenant's rate part is written at most this often (anomalies need no second)
KEEP_DAYS = 40  # usage entries older than this are dropped from the table (a month + margin)


class MeteringSettings(BaseModel):
    """``agent-factory processors`` options of the metering processor."""

    model_config = ConfigDict(extra="ignore")

    prices: str | None = Field(default=None, description="price table file (JSON); AF_PRICES")
    flush_interval_s: float = Field(default=1.0, gt=0)
    anomaly_multiple: float = Field(default=3.0, gt=1)
    anomaly_hours: int = Field(default=24, ge=1, le=24 * 7)
    anomaly_min_spend: float = Field(default=0.01, ge=0, description="an hour below this is never anomalous")
    batch: int = Field(default=500, ge=1, le=5000, description="events priced per batch")
    batch_wait_s: float = Field(default=0.05, gt=0, description="how long a batch waits to fill")


def _day(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def usage_key(agent: str, tenant: str, day: str) -> str:
    return f"{agent}/{tenant}/{day}"


def split_key(key: str) -> tuple[str, str, str]:
    agent, tenant, day = key.split("/")
    return agent, tenant, day


_SUMS = ("n", "failed", "cost", "compute", "tokens", "storage", "network", "cpu_ms", "wall_ms",
         "input_tokens", "output_tokens", "unpriced_tokens", "bytes_written", "bytes_network")  # fmt: skip


def _copy(entry: dict[str, Any] | None) -> dict[str, Any]:
    if entry is None:
        return {k: 0 for k in _SUMS} | {"o": 0, "p": 0, "h": [0] * 24, "hn": [0] * 24}
    return {**entry, "h": list(entry["h"]), "hn": list(entry["hn"])}


def add(entry: dict[str, Any], offset: int, partition: int, record: dict[str, Any]) -> None:
    """Add billing ``record`` to ``entry`` in place (a working copy: :func:`meter_batch`)."""
    entry["o"], entry["p"] = offset, partition
    entry["n"] += 1
    entry["failed"] += record["status"] != RunStatus.SUCCEEDED
    for total, part in _ADDED:
        entry[total] += record[part]
    hour = record["finished_at"].astimezone(UTC).hour
    entry["h"][hour] += record["amount_nano"]
    entry["hn"][hour] += 1


_ADDED = (("cost", "amount_nano"), ("compute", "compute_nano"), ("tokens", "tokens_nano"),
          ("storage", "storage_nano"), ("network", "network_nano"), ("cpu_ms", "cpu_ms"),
          ("wall_ms", "wall_ms"),
          ("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
          ("unpriced_tokens", "unpriced_tokens"), ("bytes_written", "bytes_written"),
          ("bytes_network", "bytes_network"))  # fmt: skip


def bill(event_id: str, e: ExecutionFinished, table: PriceTable, carried: int = 0) -> dict[str, Any]:
    """The billing record of finished event ``e`` (``carried``: its size as it arrived), as
    the dict a :class:`~mesh.queue.billing.BillingRecord` validates (hot path: no model
    is built per event; ``tests/unit/streams/test_metering.py`` checks it validates)."""
    p = price(e, table, carried)
    return {
        "id": f"bill-{event_id}", "run_id": e.run_id, "agent": e.agent, "tenant": e.tenant,
        "version": e.version, "status": e.status, "finished_at": e.finished_at,
        "price_version": table.version, "currency": table.currency, "amount_nano": p.total,
        "compute_nano": p.compute, "tokens_nano": p.tokens, "storage_nano": p.storage,
        "network_nano": p.network, "cpu_ms": p.cpu_ms, "wall_ms": p.wall_ms, "input_tokens": p.input_tokens,
        "output_tokens": p.output_tokens, "unpriced_tokens": p.unpriced_tokens,
        "bytes_written": p.bytes_written, "bytes_network": p.bytes_network,
    }  # fmt: skip


def in_period(period: Period, now: datetime, day: str, entry: dict[str, Any], what: str) -> int:
    """The part of ``entry`` (a day's usage) in ``period``'s current period: its cost
    (``what="h"``) or count (``"hn"``)."""
    _, start, end = period.bounds(now)
    day_start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    if day_start >= end or day_start + timedelta(days=1) <= start:
        return 0
    if period is Period.HOUR:
        return int(entry[what][start.hour]) if day_start == start.replace(hour=0) else 0
    return int(sum(entry[what]))


def _define(
    into: dict[str, Any], model: type[Budget] | type[Quota], key: str, ident: str, value: bytes | None
) -> None:
    if value is None:
        into.pop(ident, None)
        return
    try:
        into[ident] = model.model_validate_json(value)
    except ValidationError as exc:
        log.error("%s is not a valid %s, ignored: %s", key, model.__name__, exc)
        into.pop(ident, None)


class Meter(Service):
    """Each replica's periodic work: partials, budget and quota decisions, anomalies."""

    def __init__(self, app: faust.App, table: Any, prices: PriceTable, settings: MeteringSettings,
                 decisions: Decisions, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(**kwargs)
        self.app, self.table, self.prices, self.settings = app, table, prices, settings
        self.decisions = decisions
        self.add_dependency(decisions)  # started before us, stopped after
        self.budgets: dict[str, Budget] = {}
        self.quotas: dict[str, Quota] = {}
        self.definitions: KeyFollower[bytes | None] | None = None
        self.partials: KeyFollower[bytes | None] | None = None
        self.flags: KeyFollower[bytes | None] | None = None
        self.rates: KeyFollower[bytes | None] | None = None
        # rate key -> (when, value, its hour) we wrote last
        self._rates_written: dict[str, tuple[float, bytes, str]] = {}
        self._written: dict[str, int] = {}  # partial key -> value we last wrote
        self._alerted: set[str] = set()
        self._flushing: asyncio.Task[None] | None = None

    async def on_started(self) -> None:
        nc, js = self.decisions.nc, self.decisions.js
        assert nc is not None
        bucket = names.BUCKET_BUDGETS
        self.definitions = KeyFollower(nc, js, bucket, "", None, raw, self._definitions_changed)
        self.partials = KeyFollower(nc, js, bucket, PARTIAL_PREFIX, None, raw)
        self.flags = KeyFollower(nc, js, bucket, SPENT_PREFIX, None, raw)
        self.rates = KeyFollower(nc, js, bucket, RATE_PREFIX, None, raw)
        for mirror in (self.definitions, self.partials, self.flags, self.rates):
            await mirror.start(strict=False)  # NATS away at start: read again soon, do not crash
        self._flushing = asyncio.create_task(self._flusher(), name="metering-flush")

    async def on_stop(self) -> None:
        # Before the connection (a dependency) closes: a flush must not run on a closed one.
        if self._flushing is not None:
            await cancel_within([self._flushing], asyncio.get_running_loop().time() + 5.0)
        for mirror in (self.definitions, self.partials, self.flags, self.rates):
            if mirror is not None:
                await mirror.stop()

    def _definitions_changed(self, key: str, value: bytes | None) -> None:
        if key.startswith(BUDGET_PREFIX):
            _define(self.budgets, Budget, key, key[len(BUDGET_PREFIX) :], value)
        elif key.startswith(QUOTA_PREFIX):
            _define(self.quotas, Quota, key, key[len(QUOTA_PREFIX) :], value)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                await self.flush(datetime.now(UTC))
            except Exception as exc:  # NATS away, a rebalance: the next flush tries again
                log.warning("metering flush failed (next in %.1f s): %r", self.settings.flush_interval_s, exc)

    def _active(self) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == EXECUTIONS_TOPIC}

    async def flush(self, now: datetime) -> None:
        mirrors = (self.definitions, self.partials, self.flags, self.rates)
        if not all(m is not None and m.ready for m in mirrors):
            return  # deciding without knowing the budgets would drop every spent mark
        active = self._active()
        entries = [(split_key(k), v) for k, v in list(self.table.data.items()) if v and v.get("p") in active]
        await self._write_partials(now, active, entries)
        await self._decide(now)
        await self._anomalies(now, entries)
        self._expire(now, entries)

    def _parts(
        self, now: datetime, active: set[int], entries: Iterable[tuple[tuple[str, str, str], Any]]
    ) -> dict[str, int]:
        """Each budget's and quota's part of its current period, per partition we own.
        Entries are indexed by scope once, so a limit reads only its own entries, and
        only those of the current month (the longest period) count."""
        parts: dict[str, int] = {}
        limits: list[tuple[Budget | Quota, Period, str]] = [
            (b, b.period, "h") for b in self.budgets.values()
        ] + [(q, Period.DAY, "hn") for q in self.quotas.values() if q.max_daily is not None]
        if not limits:
            return parts
        oldest = _day(min(p.bounds(now)[1] for _, p, _ in limits))
        by_scope: dict[tuple[str | None, str | None], list[Any]] = defaultdict(list)
        for (agent, tenant, day), entry in entries:
            if day >= oldest:
                item = (day, entry)
                by_scope[(agent, None)].append(item)
                by_scope[(None, tenant)].append(item)
                by_scope[(agent, tenant)].append(item)
        for limit, period, what in limits:
            period_id = period.bounds(now)[0]
            for p in active:
                parts[f"{PARTIAL_PREFIX}{limit.id}.{period_id}.p{p}"] = 0
            for day, entry in by_scope.get((limit.agent, limit.tenant), ()):
                key = f"{PARTIAL_PREFIX}{limit.id}.{period_id}.p{entry['p']}"
                parts[key] += in_period(period, now, day, entry, what)
        return parts

    async def _write_partials(self, now: datetime, active: set[int], entries: list[Any]) -> None:
        kv = await self.decisions.js.key_value(names.BUCKET_BUDGETS)
        for key, used in self._parts(now, active, entries).items():
            seen = self.partials.values.get(key[len(PARTIAL_PREFIX) :]) if self.partials else None
            if self._written.get(key) == used and seen is not None:
                continue
            await kv.put(key, json.dumps({"used": used}).encode())
            self._written[key] = used
            if self.partials is not None:  # our own write, known before its echo arrives
                self.partials.values[key[len(PARTIAL_PREFIX) :]] = json.dumps({"used": used}).encode()

    def _used(self, ident: str, period_id: str) -> int:
        """The sum of every partition's part (ours and other replicas')."""
        assert self.partials is not None
        prefix = f"{ident}.{period_id}.p"
        total = 0
        for key, value in self.partials.values.items():
            if key.startswith(prefix) and value:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    total += int(json.loads(value)["used"])
        return total

    async def _decide(self, now: datetime) -> None:
        kv = await self.decisions.js.key_value(names.BUCKET_BUDGETS)
        keep: set[str] = set()
        for budget in list(self.budgets.values()):
            period_id, _, end = budget.period.bounds(now)
            used = self._used(budget.id, period_id) / NANO
            for pct in budget.thresholds:
                if used >= budget.limit * pct / 100:
                    await self._alert_once(
                        f"budget.alert.{budget.id}.{period_id}.{pct}", f"{budget.id}.{period_id}.{pct}",
                        {"budget": budget.model_dump(mode="json"), "period": period_id, "threshold_pct": pct,
                         "spend": used, "limit": budget.limit, "currency": self.prices.currency,
                         "reset_at": end.isoformat()},
                    )  # fmt: skip
            if budget.hard and used >= budget.limit:
                keep.add(budget.id)
                spent = Spent(
                    id=budget.id,
                    kind="budget",
                    agent=budget.agent,
                    tenant=budget.tenant,
                    period=period_id,
                    limit=budget.limit,
                    used=used,
                    currency=self.prices.currency,
                    reset_at=end,
                )
                await self._mark(kv, spent)
        for quota in list(self.quotas.values()):
            if quota.max_daily is None:  # a concurrency quota only: the workers keep it
                continue
            period_id, _, end = Period.DAY.bounds(now)
            used = self._used(quota.id, period_id)
            if used >= quota.max_daily:
                keep.add(quota.id)
                spent = Spent(
                    id=quota.id,
                    kind="quota",
                    agent=quota.agent,
                    tenant=quota.tenant,
                    period=period_id,
                    limit=quota.max_daily,
                    used=used,
                    reset_at=end,
                )
                await self._mark(kv, spent)
        assert self.flags is not None
        for ident in list(self.flags.values):
            if ident not in keep:  # its period ended, its limit rose, or it was removed
                with contextlib.suppress(Exception):
                    await kv.delete(SPENT_PREFIX + ident)

    async def _mark(self, kv: Any, spent: Spent) -> None:
        assert self.flags is not None
        current = self.flags.values.get(spent.id)
        if current is not None:
            with contextlib.suppress(ValidationError):
                old = Spent.model_validate_json(current)
                if old.period == spent.period and old.limit == spent.limit:
                    return  # marked already (its spend figure may lag: enqueue needs the mark only)
        await kv.put(SPENT_PREFIX + spent.id, spent.model_dump_json().encode())
        log.info("%s %s spent for %s: %s of %s", spent.kind, spent.id, spent.period, spent.used, spent.limit)

    async def _alert_once(self, kind: str, marker: str, payload: dict[str, Any]) -> None:
        """Publish ``af.events.<kind>`` unless it was published before: the server refuses
        a second message on the subject; ``alerted.<marker>`` remembers it longer."""
        if marker in self._alerted:
            return
        kv = await self.decisions.js.key_value(names.BUCKET_BUDGETS)
        with contextlib.suppress(Exception):
            if (await kv.get(ALERTED_PREFIX + marker)).value:
                self._alerted.add(marker)
                return
        envelope = {"schema_version": 1, "id": kind.replace(".", "-"), "type": kind.rsplit(".", 3)[0]
                    if kind.startswith("budget") else "cost.anomaly", "message_type": "EVENT",
                    "channel_type": "DURABLE", "source": "metering", "payload": payload,
                    "created_at": datetime.now(UTC).isoformat()}  # fmt: skip
        try:
            await self.decisions.js.publish(
                f"{names.EVENTS_PREFIX}.{kind}", json.dumps(envelope, default=str).encode(),
                headers={"Nats-Expected-Last-Subject-Sequence": "0", "Content-Type": "application/json"},
            )  # fmt: skip
            log.warning("alert %s: %s", kind, payload.get("spend"))
        except APIError as exc:
            if exc.err_code not in WRONG_LAST_SEQUENCE:
                raise  # not sent: the next flush tries again
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.put(ALERTED_PREFIX + marker, b"1")
        self._alerted.add(marker)

    async def _anomalies(self, now: datetime, entries: list[Any]) -> None:
        """Agents' anomalies from this replica's partitions (an agent is in one); tenants'
        from every partition's part, summed (:meth:`_tenant_rates`)."""
        hour_id, start, _ = Period.HOUR.bounds(now)
        hours_n = self.settings.anomaly_hours
        per_agent: dict[str, list[int]] = defaultdict(lambda: [0] * (hours_n + 1))
        per_tenant_part: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0] * (hours_n + 1))
        oldest = _day(start - timedelta(hours=hours_n))
        for (agent, tenant, day), entry in entries:
            if day < oldest:
                continue
            day_start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
            for h, cost in enumerate(entry["h"]):
                if not cost:
                    continue
                back = int((start - (day_start + timedelta(hours=h))).total_seconds() // 3600)
                if 0 <= back <= hours_n:
                    per_agent[agent][back] += cost
                    per_tenant_part[(tenant, entry["p"])][back] += cost
        for agent, hours in per_agent.items():
            await self._anomaly_if(f"agent.{agent}", {"agent": agent}, hour_id, hours[0], sum(hours[1:]))
        for tenant, (current, trailing) in (await self._tenant_rates(hour_id, per_tenant_part)).items():
            await self._anomaly_if(f"tenant.{tenant}", {"tenant": tenant}, hour_id, current, trailing)

    async def _tenant_rates(
        self, hour_id: str, parts: dict[tuple[str, int], list[int]]
    ) -> dict[str, list[int]]:
        """Each tenant's spend this hour and over the trailing hours (nano-units), summed over
        every partition: its parts here (written for the others to read), and theirs."""
        assert self.rates is not None
        kv = await self.decisions.js.key_value(names.BUCKET_BUDGETS)
        mine: dict[str, dict[str, Any]] = {}
        for (tenant, partition), hours in parts.items():
            key = f"tenant.{tenant}.p{partition}"
            mine[key] = {"hour": hour_id, "current": hours[0], "trailing": sum(hours[1:])}
            data = json.dumps(mine[key]).encode()
            written = self._rates_written.get(key)
            due = written is None or (written[1] != data and time.monotonic() - written[0] >= RATE_WRITE_S)
            if due or (written is not None and written[2] != hour_id):
                await kv.put(RATE_PREFIX + key, data)
                self._rates_written[key] = (time.monotonic(), data, hour_id)
                self.rates.values[key] = data  # known before its echo arrives
        totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for key, stored in list(self.rates.values.items()):
            try:
                value = mine.get(key) or json.loads(stored or b"")
                if value["hour"] != hour_id:
                    continue  # a part not written this hour: nothing spent there since
                total = totals[key.rsplit(".p", 1)[0].split(".", 1)[1]]
                total[0] += int(value["current"])
                total[1] += int(value["trailing"])
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return totals

    async def _anomaly_if(self, scope: str, who: dict[str, str], hour_id: str, current_nano: int,
                          trailing_nano: int) -> None:  # fmt: skip
        current = current_nano / NANO
        trailing = trailing_nano / self.settings.anomaly_hours / NANO
        if current >= self.settings.anomaly_min_spend and current > self.settings.anomaly_multiple * trailing:
            await self._alert_once(
                f"cost.anomaly.{scope}.{hour_id}", f"anomaly.{scope}.{hour_id}",
                {**who, "hour": hour_id, "spend": current, "trailing_hourly_average": trailing,
                 "multiple": self.settings.anomaly_multiple, "currency": self.prices.currency},
            )  # fmt: skip

    def _expire(self, now: datetime, entries: list[Any]) -> None:
        """Drop usage entries past ``KEEP_DAYS``: a tombstone in the entry's own changelog
        partition (outside an event, Faust cannot tell which one it is), then locally."""
        oldest = _day(now - timedelta(days=KEEP_DAYS))
        for (agent, tenant, day), entry in entries:
            if day < oldest:
                key = usage_key(agent, tenant, day)
                self.table.send_changelog(entry["p"], key, None, value_serializer="raw")
                self.table.data.pop(key, None)


async def prepare(js: JetStreamContext, partitions: int, replicas: int) -> None:
    """Declare ``af-billing`` and make ``AF_BILLING`` source its partitions (idempotent)."""
    await TopicRegistry(js, replicas).declare(
        BILLING_TOPIC, partitions, replicas=replicas, retention_s=7 * 86_400.0
    )
    info = await js.stream_info(names.STREAM_BILLING)
    have = {source.name for source in info.config.sources or ()}
    wanted = [naming.stream_name(BILLING_TOPIC, p) for p in range(partitions)]
    if set(wanted) <= have:
        return
    info.config.sources = [
        *(info.config.sources or []),
        *(StreamSource(name=n) for n in wanted if n not in have),
    ]
    await js.update_stream(info.config)
    log.info("%s now sources the %d partitions of %s", names.STREAM_BILLING, partitions, BILLING_TOPIC)


def meter_batch(usage: Any, events: Iterable[Any], prices: PriceTable) -> list[dict[str, Any]]:
    """Price ``events`` into the usage table (one changelog record per entry changed, in
    the entry's own partition) and return their billing records, every one (a record
    of an event the usage already has is sent again: a crash can fall between the two,
    and a record sent twice is one record downstream)."""
    records: list[dict[str, Any]] = []
    working: dict[str, dict[str, Any]] = {}
    for event in events:
        finished = read_finished(event.value)
        if finished is None:
            continue
        with traced(event, finished, "metering"):
            e = finished.payload
            record = bill(finished.id, e, prices, len(event.value))
            records.append(record)
            key = usage_key(e.agent, e.tenant, _day(e.finished_at))
            entry = working.get(key)
            if entry is None:
                current = usage.data.get(key)
                if current is not None and event.message.offset <= current["o"]:
                    continue  # applied before a crash or a move
                entry = working[key] = _copy(current)
            elif event.message.offset <= entry["o"]:
                continue
            add(entry, event.message.offset, event.message.partition, record)
    for key, entry in working.items():
        # Outside one event Faust cannot tell the partition: the entry knows its own.
        usage.send_changelog(entry["p"], key, entry)
        usage.data[key] = entry
    return records


def install(app: faust.App, source: faust.TopicT, config: ProcessorConfig) -> None:
    settings = MeteringSettings.model_validate({"prices": os.environ.get("AF_PRICES"), **config.options})
    prices = configured_prices(config.options)
    usage = app.Table(
        USAGE_TABLE, default=None, partitions=config.partitions, help="usage per agent, tenant, day"
    )
    billing = app.topic(BILLING_TOPIC, value_serializer="raw", partitions=config.partitions)
    meter = Meter(app, usage, prices, settings, Decisions(app))
    app.service(cast(Any, meter))  # an instance: Faust starts it with the app (and its connection)

    @app.agent(source, name="metering")
    async def meter_executions(stream: faust.StreamT[bytes]) -> None:
        # Batches: Faust acks a batch's events only after this body is done with them,
        # so their billing records and usage are sent before any commit covers them.
        batches = cast(Any, stream).take_events(settings.batch, within=settings.batch_wait_s)
        async for events in batches:
            records = meter_batch(usage, events, prices)
            if records:
                await billing.send(value=to_json(records))  # a list of BillingRecord

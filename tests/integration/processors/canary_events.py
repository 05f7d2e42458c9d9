"""Real finished events for the canary tests, published as a worker writes them, and
the metrics they should give, computed offline from the same events."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh import names
from mesh.canary import VersionMetrics
from mesh.envelope import utcnow
from mesh.queue.outcome import outcome_message
from mesh.queue.producer import TaskSpec, build_task
from mesh.queue.runs import RunState, RunStatus
from mesh.wire.protocol import parse_headers


@dataclass(frozen=True)
class Outcome:
    agent: str
    version: str | None
    run: str
    duration_ms: float
    failed: bool = False
    cpu_ms: float | None = None
    status: RunStatus | None = None  # overrides failed (expired, cancelled)


def outcomes(agent: str, version: str | None, n: int, median_ms: float, error_rate: float = 0.0,
             seed: int = 0, cpu_every: int = 0) -> list[Outcome]:  # fmt: skip
    """``n`` runs with log-normal durations around ``median_ms`` (µs-rounded, as events carry them)."""
    rng = random.Random(f"{agent}-{version}-{seed}")
    made = []
    for i in range(n):
        duration = round(rng.lognormvariate(0, 0.8) * median_ms * 1000) / 1000
        cpu = round(duration * 0.3, 3) if cpu_every and i % cpu_every == 0 else None
        run = f"{agent}-{version}-{seed}-{i:05d}".replace(".", "_").replace("+", "_")
        made.append(Outcome(agent, version, run, duration, rng.random() < error_rate, cpu))
    return made


def _message(o: Outcome) -> tuple[str, bytes, dict[str, str]]:
    task = build_task(TaskSpec(o.agent, {"i": 0}, tenant="t"), o.run)
    finished = utcnow()
    status = o.status or (RunStatus.FAILED if o.failed else RunStatus.SUCCEEDED)
    state = RunState(
        run_id=o.run, agent=o.agent, tenant="t", status=status, attempts=1,
        enqueued_at=finished, started_at=finished - timedelta(milliseconds=o.duration_ms),
        finished_at=finished,
        error="boom" if status == RunStatus.FAILED else None, version=o.version,
        audit={"cpu_ms": o.cpu_ms} if o.cpu_ms is not None else None,
    )  # fmt: skip
    subject, data, headers = outcome_message(task, state)
    return subject, data, parse_headers(headers)


async def publish(js: JetStreamContext, events: list[Outcome]) -> dict[str, bytes]:
    """Publish ``events`` in order (pipelined, acks awaited in batches); what each run's
    finished event was, as published."""
    pending, published = [], {}
    for o in events:
        subject, data, headers = _message(o)
        published[o.run] = data
        pending.append(await js.publish_async(subject, data, headers=headers))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return published


def exact_quantile(values: list[float], q: float) -> float:
    """The value of rank ``q·(n-1)`` (rounded down), the rank DDSketch answers for."""
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def duration_of(o: Outcome) -> float:
    """The duration the event carries (its timestamps are µs-precise)."""
    return timedelta(milliseconds=o.duration_ms).total_seconds() * 1000


async def metrics(js: JetStreamContext, agent: str, version: str) -> VersionMetrics | None:
    try:
        bucket = names.BUCKET_CANARY_METRICS
        raw = await js.get_last_msg(
            names.kv_stream(bucket), names.kv_subject(bucket, names.version_key(agent, version))
        )
    except NotFoundError:
        return None
    assert raw.data is not None
    return VersionMetrics.model_validate_json(raw.data)


def total(found: VersionMetrics | None, window: str = "1h") -> int:
    return found.windows[window].requests if found is not None else 0


def as_json(found: VersionMetrics) -> dict[str, Any]:
    return json.loads(found.model_dump_json())

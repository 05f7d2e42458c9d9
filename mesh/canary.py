"""The canary metrics' KV contract (``af_canary_metrics``): written by the canary
processor (``streams/processors/canary.py``), read by the gateway and the rollout
controller of a later issue. Each reads the models here, not the processor's code.

One entry per agent version, key :func:`mesh.names.version_key` (``<agent>.<version>``),
value a :class:`VersionMetrics`: per sliding window (:data:`WINDOWS`) the requests,
errors, error rate, p50/p95/p99 duration and cost per task, or only the counts
(``status: "insufficient data"``) below ``min_samples`` (docs/processors-canary.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from mesh import names
from mesh.kv import current_entries

__all__ = [
    "INSUFFICIENT",
    "RELATIVE_ACCURACY",
    "WINDOWS",
    "VersionMetrics",
    "WindowMetrics",
    "read_version_metrics",
]

#: Window name -> how many minute buckets it merges (the current minute and those before it).
WINDOWS: Final[dict[str, int]] = {"1m": 1, "5m": 5, "15m": 15, "1h": 60}
INSUFFICIENT: Final = "insufficient data"
#: Every quantile a canary sketch answers is within 1% of the true value of that rank.
RELATIVE_ACCURACY: Final = 0.01


class WindowMetrics(BaseModel):
    """One sliding window of one version. Rates, percentiles and cost are None
    (``status: "insufficient data"``) below the minimum sample count."""

    minutes: int
    requests: int
    errors: int
    status: Literal["ok", "insufficient data"]
    error_rate: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    cost_per_task: float | None = None  # in cost_unit


class VersionMetrics(BaseModel):
    """The value of ``af_canary_metrics`` key ``<agent>.<version>``."""

    agent: str
    version: str
    as_of: datetime  # when the processor computed it; windows end at this minute
    min_samples: int
    relative_accuracy: float = RELATIVE_ACCURACY
    cost_unit: str = "USD"  # the price table's currency (metering's prices)
    windows: dict[str, WindowMetrics]


async def read_version_metrics(js: JetStreamContext, agent: str, version: str | None) -> list[VersionMetrics]:
    """What the canary processor last published for ``agent``'s ``version`` (None:
    every version of it), by version; empty when it has published nothing."""
    kv = await js.key_value(names.BUCKET_CANARY_METRICS)
    if version is not None:
        try:
            entry = await kv.get(names.version_key(agent, version))
        except NotFoundError:
            return []
        entries = [entry] if entry.value else []
    else:
        entries = await current_entries(js, kv, names.BUCKET_CANARY_METRICS, f"{agent}.>")
    found = [VersionMetrics.model_validate_json(e.value or b"") for e in entries]
    return sorted(found, key=lambda m: m.version)

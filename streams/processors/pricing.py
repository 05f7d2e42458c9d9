"""What an execution costs: a versioned price table applied to a finished event.

Amounts are integers in **nano-units** of the table's currency (1e-9), so
sums are exact however many executions are added (floats drift). Resources:

* compute — CPU seconds from the sandbox audit (``audit.cpu_ms``) when the
  run was measured, else wall seconds (``duration_ms``); plus peak memory
  x wall time (GB-seconds) when the audit measured memory;
* model tokens — per model, per 1,000 input and output tokens, from what the
  agent reported (``usage``); a model not in the table is priced at
  ``models["*"]`` if present, else 0 and counted as ``unpriced_tokens``;
* storage — bytes the run wrote (``audit.bytes_written``);
* network — the bytes of the finished event the mesh carried (its input,
  result and metadata: what the run moved through NATS, measured as it arrived).

The table is configuration (``AF_PRICES``: a JSON file; the default
below otherwise). Its ``version`` is recorded on every priced execution, so a
price change never silently re-prices history.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mesh.queue.billing import NANO
from mesh.queue.runs import ExecutionFinished

__all__ = ["NANO", "ModelPrice", "PriceTable", "Priced", "configured_prices", "load_prices", "price"]

GB = 1024**3


class ModelPrice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)


class PriceTable(BaseModel):
    """Prices per resource, in ``currency`` units."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=64)
    currency: str = Field(default="USD", min_length=3, max_length=3)
    cpu_second: float = Field(default=0.000_05, ge=0)  # per CPU second measured
    wall_second: float = Field(default=0.000_02, ge=0)  # per second of an unmeasured run
    gb_second: float = Field(default=0.000_002, ge=0)  # peak memory x wall time
    gb_written: float = Field(default=0.02, ge=0)
    gb_network: float = Field(default=0.09, ge=0)
    models: dict[str, ModelPrice] = Field(default_factory=dict)


DEFAULT_PRICES = PriceTable(
    version="2026-12-01",
    models={
        "small-model": ModelPrice(input_per_1k=0.000_15, output_per_1k=0.000_6),
        "large-model": ModelPrice(input_per_1k=0.002_5, output_per_1k=0.01),
    },
)


def load_prices(path: str | Path | None) -> PriceTable:
    """The price table in ``path`` (JSON), or the default. Raises ``ValueError``
    (a pydantic ``ValidationError``) naming what is wrong in the file."""
    if not path:
        return DEFAULT_PRICES
    return PriceTable.model_validate_json(Path(path).read_bytes())


def configured_prices(options: Mapping[str, Any]) -> PriceTable:
    """The price table a processor is given: option ``prices`` (a file), else ``AF_PRICES``,
    else the default. Metering and the canary price the same way with it."""
    return load_prices(options["prices"] if "prices" in options else os.environ.get("AF_PRICES"))


@dataclass(frozen=True, slots=True)
class Priced:
    """One execution's cost, in nano-units, and the quantities it was priced on."""

    compute: int
    tokens: int
    storage: int
    network: int
    cpu_ms: float
    wall_ms: float
    input_tokens: int
    output_tokens: int
    unpriced_tokens: int
    bytes_written: int
    bytes_network: int

    @property
    def total(self) -> int:
        return self.compute + self.tokens + self.storage + self.network


def _nano(amount: float) -> int:
    return round(amount * NANO)


def price(event: ExecutionFinished, table: PriceTable, carried: int = 0) -> Priced:
    """``carried``: the bytes of the finished event as it arrived (the network it used)."""
    audit = event.audit or {}
    wall_ms = float(event.duration_ms or 0.0)
    cpu_ms = audit.get("cpu_ms")
    if isinstance(cpu_ms, int | float):
        compute = _nano(cpu_ms / 1000 * table.cpu_second)
    else:
        cpu_ms = 0.0
        compute = _nano(wall_ms / 1000 * table.wall_second)
    memory = audit.get("memory_peak_bytes") or audit.get("peak_rss_bytes")
    if isinstance(memory, int | float) and memory > 0:
        compute += _nano(memory / GB * wall_ms / 1000 * table.gb_second)
    tokens = unpriced = tokens_in = tokens_out = 0
    fallback = table.models.get("*")
    for used in event.usage:
        tokens_in += used.input_tokens
        tokens_out += used.output_tokens
        rate = table.models.get(used.model, fallback)
        if rate is None:
            unpriced += used.input_tokens + used.output_tokens
            continue
        tokens += _nano(
            used.input_tokens / 1000 * rate.input_per_1k + used.output_tokens / 1000 * rate.output_per_1k
        )
    written = audit.get("bytes_written")
    written = int(written) if isinstance(written, int | float) else 0
    return Priced(
        compute=compute, tokens=tokens, storage=_nano(written / GB * table.gb_written),
        network=_nano(carried / GB * table.gb_network), cpu_ms=float(cpu_ms), wall_ms=wall_ms,
        input_tokens=tokens_in, output_tokens=tokens_out, unpriced_tokens=unpriced,
        bytes_written=written, bytes_network=carried,
    )  # fmt: skip

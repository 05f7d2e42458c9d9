"""The billing record: one priced execution, for downstream accounting.

Written by the metering processor (``streams.processors.metering``) to topic
``af-billing``, whose partitions ``AF_BILLING`` sources; projected into
PostgreSQL's ``billing_records`` by the gateway's recorder
(``agents.recorder.BILLING``). At least once on the wire, once per ``id`` in
the table. Amounts are integers in nano-units (1e-9) of ``currency``.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from mesh.queue.runs import RunStatus

__all__ = ["NANO", "BillingRecord"]

NANO = 1_000_000_000  # nano-units per currency unit


class BillingRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str  # bill-<finished event id>: stable, one per run and replay generation
    run_id: str
    agent: str
    tenant: str
    version: str | None = None
    status: RunStatus
    finished_at: datetime
    price_version: str
    currency: str
    amount_nano: int
    compute_nano: int
    tokens_nano: int
    storage_nano: int
    network_nano: int
    cpu_ms: float
    wall_ms: float
    input_tokens: int
    output_tokens: int
    unpriced_tokens: int
    bytes_written: int
    bytes_network: int

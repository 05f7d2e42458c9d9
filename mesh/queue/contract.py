"""The wire contract, as files: JSON Schema and an example of each message a
client may publish or read, generated from the models the code runs on.

    python -m mesh.queue.contract docs/schemas     # regenerate (a test checks they are current)

* ``task`` — what ``af.tasks.<agent>.<priority>`` carries: an
  :class:`~mesh.envelope.Envelope` whose payload is ``{"agent", "input",
  "idempotency_key"}`` (headers: ``Content-Type: application/json``,
  ``AF-Tenant``, and ``Nats-Msg-Id: run-<id>`` for an idempotent task);
* ``run-state`` — a record of the ``af_runs`` bucket (:class:`~mesh.queue.runs.RunState`;
  a final record is the finished event's envelope instead);
* ``execution-finished`` — the payload of ``af.events.execution.finished.<agent>.<run id>``
  (:class:`~mesh.queue.runs.ExecutionFinished`, inside an envelope);
* ``lifecycle-changed`` — the payload of ``af.events.lifecycle.changed.<agent>``
  (:class:`~mesh.queue.runs.LifecycleChanged`, inside an envelope).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mesh.envelope import Envelope, MessageType, Metadata, Priority
from mesh.queue.runs import ExecutionFinished, LifecycleChanged, ModelUsage, RunState, RunStatus

__all__ = ["CONTRACT", "write_schemas"]

_AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)

CONTRACT: dict[str, tuple[type[BaseModel], BaseModel]] = {
    "task": (
        Envelope,
        Envelope(
            id="r-2026-12-01-0001", correlation_id="r-2026-12-01-0001", target="fuel-combustion",
            message_type=MessageType.COMMAND, type="task.run",
            payload={"agent": "fuel-combustion", "input": {"fuel": "diesel", "quantity": 100, "unit": "L"},
                     "idempotency_key": "invoice-2026-001"},
            metadata=Metadata(tenant="acme", routing_key="site-7", priority=Priority.HIGH, ttl_s=3600),
            created_at=_AT,
        ),
    ),
    "run-state": (
        RunState,
        RunState(
            run_id="r-2026-12-01-0001", agent="fuel-combustion", tenant="acme", routing_key="site-7",
            priority=1, status=RunStatus.QUEUED, idempotency_key="invoice-2026-001", enqueued_at=_AT,
            expires_at=datetime(2026, 12, 1, 10, 30, tzinfo=UTC), seq=42,
        ),
    ),
    "execution-finished": (
        ExecutionFinished,
        ExecutionFinished(
            run_id="r-2026-12-01-0001", agent="fuel-combustion", tenant="acme", status=RunStatus.SUCCEEDED,
            attempts=1, result={"co2e_kg": 270.58298, "co2_kg": 269.719665, "scope": 1, "fuel": "diesel"},
            input={"fuel": "diesel", "quantity": 100, "unit": "L"},
            routing_key="site-7", priority=1, idempotency_key="invoice-2026-001", enqueued_at=_AT,
            started_at=_AT, finished_at=_AT, duration_ms=3.2, version="1.2.0",
            usage=[ModelUsage(model="small-model", input_tokens=420, output_tokens=37)],
        ),
    ),
    "lifecycle-changed": (
        LifecycleChanged,
        LifecycleChanged(
            id=17, agent="fuel-combustion", version="1.2.0", from_state="running", to_state="draining",
            actor="ops-token", reason="replaced by 1.3.0", at=_AT,
        ),
    ),
}  # fmt: skip


def rendered() -> dict[str, str]:
    """File name -> text of every schema and example."""
    out: dict[str, str] = {}
    for name, (model, example) in CONTRACT.items():
        schema: dict[str, Any] = model.model_json_schema(mode="serialization")
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        out[f"{name}.example.json"] = example.model_dump_json(indent=2, exclude_none=True) + "\n"
    return out


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file, text in rendered().items():
        (directory / file).write_text(text)
        written.append(directory / file)
    return written


if __name__ == "__main__":
    for path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(path)

"""docs/schemas is the wire contract: current with the code, and its example
task, published by hand as a client in another language would, runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import utcnow
from mesh.queue.contract import CONTRACT, rendered
from mesh.queue.runs import RunStatus, get_run, parse_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import unique

from .test_worker_basics import wait_for_run

SCHEMAS = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def test_the_committed_schemas_and_examples_are_what_the_code_generates() -> None:
    for file, text in rendered().items():
        committed = SCHEMAS / file
        assert committed.exists(), f"{committed} missing: run python -m mesh.queue.contract docs/schemas"
        assert committed.read_text() == text, (
            f"{committed} is stale: run python -m mesh.queue.contract docs/schemas"
        )


def test_each_example_validates_against_its_model() -> None:
    for name, (model, _) in CONTRACT.items():
        model.model_validate_json((SCHEMAS / f"{name}.example.json").read_text())
    parse_run((SCHEMAS / "run-state.example.json").read_bytes())


async def test_the_example_task_published_by_hand_runs(nc: Client, mesh_js: JetStreamContext) -> None:
    agent = unique("contract")
    task: dict[str, Any] = json.loads((SCHEMAS / "task.example.json").read_text())
    run_id = unique("hand-run")
    # created_at is the enqueue time: the TTL (ttl_s) counts from it.
    task.update(id=run_id, target=agent, created_at=utcnow().isoformat())
    task["payload"]["agent"] = agent
    seen: list[Any] = []

    async def handler(ctx: TaskContext) -> Any:
        seen.append((ctx.input, ctx.tenant, ctx.routing_key))
        return {"ok": True}

    worker = TaskWorker(nc, mesh_js, {agent: (AgentQueueConfig(agent, priorities=(1,)), handler)})
    await worker.start()
    try:
        headers = {"Content-Type": "application/json", "AF-Tenant": "acme"}
        await mesh_js.publish(names.task_subject(agent, 1), json.dumps(task).encode(), headers=headers)
        state = await wait_for_run(mesh_js, run_id, RunStatus.SUCCEEDED)
    finally:
        await worker.stop()
    assert seen == [({"fuel": "diesel", "quantity": 100, "unit": "L"}, "acme", "site-7")]
    assert state.result == {"ok": True} and (await get_run(mesh_js, run_id)) is not None

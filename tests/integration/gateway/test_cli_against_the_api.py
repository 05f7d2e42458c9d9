"""The CLI against a real gateway: ``-o json`` before any command, dead letters named by their run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from mesh import deadletters, names
from mesh.envelope import new_id
from mesh.queue import dlq

from .conftest import agent_factory, ok


async def dead_letter_of(js: JetStreamContext, agent: str, msg_id: str) -> int:
    """The DLQ sequence of the dead letter whose original carried ``Nats-Msg-Id: msg_id``."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for view in await dlq.list_dead_letters(js, name=agent, limit=1000):
            if view.entry.headers.get("Nats-Msg-Id") == msg_id:
                return view.seq
        await asyncio.sleep(0.05)
    raise AssertionError(f"no dead letter of {msg_id} in 20 s")


async def test_output_json_given_before_the_command(api: TestClient[Any, Any]) -> None:
    for flag in ("-o", "--output"):
        agents = json.loads(ok(await agent_factory(api, flag, "json", "status")))["agents"]
        assert "fuel-combustion" in {a["key"] for a in agents}
        stats = json.loads(ok(await agent_factory(api, flag, "json", "queue", "stats")))
        assert "lanes" in stats and "dead_letters" in stats
    table = ok(await agent_factory(api, "-o", "json", "status", "-o", "table"))  # its own wins
    assert table.startswith("AGENT ")
    assert table.splitlines()[-1].startswith("sandbox: on: rlimits")


async def test_dead_letter_of_an_undecodable_task_is_shown_with_its_run(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    run_id, anonymous = new_id(), f"anon-{new_id()}"
    # Bytes no worker can decode: the queue's Nats-Msg-Id still names the run.
    await mesh_js.publish(names.task_subject("noop", 2), b"\x00not a task",
                          headers={"Nats-Msg-Id": f"run-{run_id}"})  # fmt: skip
    await mesh_js.publish(names.task_subject("noop", 2), b"\x00nobody's", headers={"Nats-Msg-Id": anonymous})
    seq = await dead_letter_of(mesh_js, "noop", f"run-{run_id}")
    unnamed = await dead_letter_of(mesh_js, "noop", anonymous)
    try:
        shown = await (await api.get(f"/api/v1/queue/dlq/{seq}")).json()
        assert shown["run_id"] == run_id
        listed = (await (await api.get("/api/v1/queue/dlq?agent=noop&limit=1000")).json())["dead_letters"]
        assert {d["seq"]: d["run_id"] for d in listed}[seq] == run_id
        table = ok(await agent_factory(api, "queue", "dlq", "show", str(seq))).splitlines()
        assert table[2].split() == ["run_id", run_id]
        nobody = ok(await agent_factory(api, "queue", "dlq", "show", str(unnamed))).splitlines()
        assert nobody[2].split() == ["run_id", "-"]  # not "None"
        rows = ok(await agent_factory(api, "queue", "dlq", "list", "--agent", "noop", "--limit", "1000"))
        mine = [row for row in rows.splitlines() if row.startswith(f"{seq} ")]
        assert len(mine) == 1 and mine[0].split()[2] == run_id
        as_json = json.loads(ok(await agent_factory(api, "-o", "json", "queue", "dlq", "show", str(seq))))
        assert as_json["run_id"] == run_id
    finally:
        for dead in (seq, unnamed):
            await dlq.purge(mesh_js, seq=dead)


async def test_dead_letter_stored_without_a_run_id_is_named_by_its_envelope(
    api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    # As the dlq-mover stores a task it could not decode: no run id recorded.
    run_id = new_id()
    payload = json.dumps({"id": run_id, "payload": "not an envelope"}).encode()
    subject = names.task_subject("noop", 2)
    entry = deadletters.DeadLetter.of(payload=payload, origin="tasks", name="noop", subject=subject)
    seq = await deadletters.dead_letter(mesh_js, entry, dedup_id=f"test-{run_id}")
    try:
        shown = await (await api.get(f"/api/v1/queue/dlq/{seq}")).json()
        assert shown["run_id"] == run_id
        listed = (await (await api.get("/api/v1/queue/dlq?agent=noop&limit=1000")).json())["dead_letters"]
        assert {d["seq"]: d["run_id"] for d in listed}[seq] == run_id
    finally:
        await dlq.purge(mesh_js, seq=seq)


async def test_schedule_rm_prints_json_when_asked(api: TestClient[Any, Any], schedules_cleaned: None) -> None:
    name = f"cli-rm-{new_id()[:8]}"
    body = {"name": name, "cron": "@daily", "agent": "noop"}
    created = await api.post("/api/v1/queue/schedules", json=body)
    assert created.status == 201, await created.text()
    assert json.loads(ok(await agent_factory(api, "-o", "json", "schedule", "rm", name))) == {"removed": name}
    again = await agent_factory(api, "-o", "json", "schedule", "rm", name)
    assert again.exit_code == 1 and "404" in again.output


async def test_run_takes_its_input_from_a_file_or_refuses_both_or_neither(
    api: TestClient[Any, Any], tmp_path: Path
) -> None:
    given = tmp_path / "input.json"
    given.write_text('{"echo": {"from": "a file"}}')
    view = json.loads(
        ok(await agent_factory(api, "run", "noop", "--input-file", str(given), "--wait", "-o", "json"))
    )
    assert view["status"] == "succeeded" and view["result"] == {"echo": {"from": "a file"}}
    for args in ([], ["--input", "{}", "--input-file", str(given)]):
        result = await agent_factory(api, "run", "noop", *args)
        assert result.exit_code == 2 and "one of --input JSON or --input-file FILE" in result.output
    given.write_text("{not json")
    result = await agent_factory(api, "run", "noop", "--input-file", str(given))
    assert result.exit_code == 1 and "--input-file is not valid JSON" in result.output

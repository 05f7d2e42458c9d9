"""``/api/v1/queue/schedules`` and ``agent-factory schedule`` against a real server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from nats.js import JetStreamContext

from gateway.commands.common import Ctx
from gateway.commands.schedule import schedule
from mesh import names

from .conftest import TOKEN

BASE = "/api/v1/queue/schedules"
DIESEL = {"fuel": "diesel", "quantity": 100, "unit": "L"}


async def test_create_list_get_delete_a_cron_schedule(
    schedules_api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    body = {"name": "api-nightly", "cron": "0 2 * * *", "agent": "fuel-combustion",
            "input": DIESEL, "timezone": "Europe/Paris", "priority": "low"}  # fmt: skip
    resp = await schedules_api.post(BASE, json=body)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert resp.headers["Location"] == f"{BASE}/api-nightly"
    assert created["kind"] == "cron" and created["priority"] == "LOW" and created["next_fire"]
    info = await mesh_js.stream_info(names.STREAM_SCHEDULES,
                                     subjects_filter=names.schedule_def_subject("api-nightly"))  # fmt: skip
    assert info.state.subjects == {names.schedule_def_subject("api-nightly"): 1}

    again = await schedules_api.post(BASE, json=body)
    assert again.status == 409

    listed = await (await schedules_api.get(BASE)).json()
    assert "api-nightly" in {s["name"] for s in listed["schedules"]}
    triggers = await (await schedules_api.get(BASE, params={"kind": "trigger"})).json()
    assert "api-nightly" not in {s["name"] for s in triggers["schedules"]}
    one = await (await schedules_api.get(f"{BASE}/api-nightly")).json()
    assert one["cron"] == "0 2 * * *" and one["input"] == DIESEL

    assert (await schedules_api.delete(f"{BASE}/api-nightly")).status == 204
    assert (await schedules_api.get(f"{BASE}/api-nightly")).status == 404
    assert (await schedules_api.delete(f"{BASE}/api-nightly")).status == 404
    info = await mesh_js.stream_info(names.STREAM_SCHEDULES,
                                     subjects_filter=names.schedule_def_subject("api-nightly"))  # fmt: skip
    assert not info.state.subjects


async def test_bad_cron_is_422_with_a_clear_message(schedules_api: TestClient[Any, Any]) -> None:
    body = {"name": "api-bad", "cron": "61 * * * *", "agent": "noop"}
    resp = await schedules_api.post(BASE, json=body)
    assert resp.status == 422
    problem = await resp.json()
    [error] = problem["errors"]
    assert error["loc"][-1] == "cron" and "invalid cron expression '61 * * * *'" in error["msg"]
    resp = await schedules_api.post(BASE, json={**body, "cron": "@every 100ms"})
    assert "at least 1s" in (await resp.json())["errors"][0]["msg"]


async def test_unknown_agent_is_404_and_bad_input_422(schedules_api: TestClient[Any, Any]) -> None:
    resp = await schedules_api.post(BASE, json={"name": "api-x", "cron": "@daily",
                                                "agent": "no-such-agent"})  # fmt: skip
    assert resp.status == 404 and "no-such-agent" in (await resp.json())["detail"]
    resp = await schedules_api.post(BASE, json={"name": "api-x", "cron": "@daily",
                                                "agent": "fuel-combustion", "input": {}})  # fmt: skip
    assert resp.status == 422 and (await resp.json())["errors"]
    assert (await schedules_api.get(f"{BASE}/api-x")).status == 404  # nothing was stored


async def test_triggers_share_the_resource_and_put_replaces(
    schedules_api: TestClient[Any, Any], mesh_js: JetStreamContext
) -> None:
    body = {"on": "af.events.execution.finished.fuel-combustion.*", "agent": "noop"}
    resp = await schedules_api.put(f"{BASE}/api-on-finish", json=body)
    assert resp.status == 201 and (await resp.json())["kind"] == "trigger"
    info = await mesh_js.consumer_info(names.STREAM_EVENTS, names.trigger_consumer("api-on-finish"))
    assert info.config.filter_subject == body["on"]
    resp = await schedules_api.put(f"{BASE}/api-on-finish",
                                   json={**body, "on": "af.events.*.*.unit-normaliser"})  # fmt: skip
    assert resp.status == 200
    info = await mesh_js.consumer_info(names.STREAM_EVENTS, names.trigger_consumer("api-on-finish"))
    assert info.config.filter_subject == "af.events.*.*.unit-normaliser"
    loop = await schedules_api.put(f"{BASE}/api-on-finish",
                                   json={**body, "on": "af.events.execution.finished.*.*"})  # fmt: skip
    assert loop.status == 422 and "own finished events" in await loop.text()
    bad = await schedules_api.post(BASE, json={**body, "name": "api-t2", "on": "af.tasks.>"})
    assert bad.status == 422
    assert (await schedules_api.delete(f"{BASE}/api-on-finish")).status == 204


async def test_cli_add_ls_rm(schedules_api: TestClient[Any, Any], tmp_path: Any) -> None:
    url = str(schedules_api.make_url("/")).rstrip("/")
    ctx = Ctx(tmp_path, url, TOKEN, verbose=False)
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return asyncio.to_thread(runner.invoke, schedule, list(args), obj=ctx)

    added = await cli("add", "cli-every", "--cron", "*/5 * * * *", "--agent", "noop",
                      "--input", '{"echo": 1}', "--priority", "high")  # fmt: skip
    assert added.exit_code == 0, added.output
    trig = await cli("add-trigger", "cli-trig", "--on", "af.events.cli.*", "--agent", "noop")
    assert trig.exit_code == 0, trig.output
    table = await cli("ls")
    assert "cli-every" in table.output and "*/5 * * * *" in table.output
    assert "on af.events.cli.*" in table.output
    data = json.loads((await cli("ls", "-o", "json")).output)
    by_name = {s["name"]: s for s in data["schedules"]}
    assert by_name["cli-every"]["priority"] == "HIGH" and by_name["cli-trig"]["kind"] == "trigger"
    bad = await cli("add", "cli-bad", "--cron", "* * *", "--agent", "noop")
    assert bad.exit_code == 1 and "has 3" in bad.output
    for name in ("cli-every", "cli-trig"):
        removed = await cli("rm", name)
        assert removed.exit_code == 0 and f"removed {name}" in removed.output
    gone = await cli("rm", "cli-every")
    assert gone.exit_code == 1 and "404" in gone.output

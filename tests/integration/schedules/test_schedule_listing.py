"""Listing schedules reads the bucket and leaves nothing behind on the server."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from click.testing import CliRunner
from nats.js import JetStreamContext

from gateway.commands.common import Ctx
from gateway.commands.schedule import schedule
from mesh import names
from mesh.schedules.definitions import list_definitions

from .conftest import TOKEN

BASE = "/api/v1/queue/schedules"


async def consumers(js: JetStreamContext) -> set[str]:
    return {c.name for c in await js.consumers_info(names.kv_stream(names.BUCKET_SCHEDULES))}


async def test_listing_schedules_leaves_no_consumer_behind(
    schedules_api: TestClient[Any, Any], mesh_js: JetStreamContext, tmp_path: Any
) -> None:
    mine = ["list-a", "list-b"]
    for name in mine:
        body = {"name": name, "cron": "@daily", "agent": "noop"}
        assert (await schedules_api.put(f"{BASE}/{name}", json=body)).status in (200, 201)
    ctx = Ctx(tmp_path, str(schedules_api.make_url("/")).rstrip("/"), TOKEN, verbose=False)
    try:
        before = await consumers(mesh_js)
        for _ in range(5):
            listed = (await (await schedules_api.get(BASE)).json())["schedules"]
            assert set(mine) <= {s["name"] for s in listed}
            found = [d.name for d in await list_definitions(mesh_js)]
            assert found == sorted(found) and set(mine) <= set(found)
            table = await asyncio.to_thread(CliRunner().invoke, schedule, ["ls"], obj=ctx)
            assert table.exit_code == 0 and "list-a" in table.output, table.output
        assert await consumers(mesh_js) - before == set()
    finally:
        for name in mine:
            await schedules_api.delete(f"{BASE}/{name}")

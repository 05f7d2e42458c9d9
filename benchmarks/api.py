"""API benchmark: read endpoints under 200 concurrent clients, the gateway in this
process and the load generator in a child process of its own (so the two do not
share an event loop; they do share the machine's cores).

The clients read what an operator's dashboard and scripts read: a run's state
(KV), a page of the run index (PostgreSQL, as the non-owner role with the tenant
set per transaction), the agent catalog and one agent. Every request carries a
bearer token, so authentication is on the measured path.

* paced: ``concurrency`` clients, each on its own connection, together at
  ``rate_per_s``; a latency counts from when the request was due, not sent, so
  a stall cannot hide behind the requests it delayed (no coordinated omission).
  ``p50_ms``/``p99_ms`` and the target come from here.
* saturated: the same clients back to back: ``requests_per_s`` is the most the
  gateway answered, with the latency that costs.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from agents.registry import example_registry
from benchmarks.harness import Servers, percentile, say
from gateway.app import Gateway, Parts
from gateway.settings import Settings
from mesh.queue.producer import TaskSpec

__all__ = ["bench_api", "load"]

TOKEN = "bench-api"
ROWS = 2000  # runs in the index (PostgreSQL)
LIVE = 200  # runs with a live record (KV)
_LOAD_MAIN = """
import asyncio, json, sys
from benchmarks.api import load
from gateway.runtime import tune_gc
tune_gc()  # as the gateway: a collection pause in the generator would count as the API's
print(json.dumps(asyncio.run(load(*json.loads(sys.argv[1])))))
"""


async def _seed(gateway: Gateway, database_url: str) -> list[str]:
    """Runs to read: LIVE queued through the queue (KV records), ROWS in the index."""
    assert gateway.queue is not None
    live = [
        (await gateway.queue.enqueue(TaskSpec(agent="noop", input={"echo": i}))).run_id for i in range(LIVE)
    ]
    now = datetime.now(UTC)
    owner = await asyncpg.connect(database_url)
    try:
        await owner.executemany(
            """INSERT INTO runs (run_id, tenant, agent_key, status, enqueued_at, finished_at, revision)
               VALUES ($1, 'default', 'noop', 'succeeded', $2, $2, 1)""",
            [(f"bench-{uuid.uuid4().hex}", now - timedelta(seconds=i)) for i in range(ROWS)],
        )
    finally:
        await owner.close()
    return live


def _paths(live: list[str]) -> list[str]:
    """Each endpoint as often as the others; the run read goes round the live runs."""
    return [
        path
        for run_id in live[:50]
        for path in (
            "/api/v1/agents",
            "/api/v1/agents/noop",
            "/api/v1/runs?limit=20",
            f"/api/v1/runs/{run_id}",
        )
    ]


async def load(
    url: str, paths: list[str], clients: int, rate_per_s: float, duration_s: float
) -> dict[str, Any]:
    """The load generator: ``clients`` connections, paced at ``rate_per_s`` in all
    (0: each sends its next request as soon as its last is answered)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    start = time.perf_counter() + 0.5  # every client set up before the first is due
    end = start + duration_s

    async def client(i: int, http: aiohttp.ClientSession) -> None:
        interval = clients / rate_per_s if rate_per_s else 0.0
        due = start + (i / clients) * interval
        n = i
        while due < end:
            if interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            else:
                due = time.perf_counter()
            async with http.get(url + paths[n % len(paths)]) as resp:
                await resp.read()
                if resp.status != 200:
                    errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
            latencies.append((time.perf_counter() - due) * 1000)
            due += interval
            n += 1

    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - max(t0, start)
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "max_ms": round(max(latencies, default=0.0), 3),
        "errors": errors,
    }


async def _child_load(
    url: str, paths: list[str], clients: int, rate: float, duration_s: float
) -> dict[str, Any]:
    args = json.dumps([url, paths, clients, rate, duration_s])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOAD_MAIN, args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the load generator failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


async def bench_api(
    env: Servers, clients: int = 200, rate_per_s: float = 1000.0, duration_s: float = 10.0
) -> dict[str, Any]:
    assert env.postgres is not None
    parts = Parts(recorder=False, run_index=False, billing=False, maintenance=False, scheduler=False,
                  dedicated=False)  # fmt: skip
    settings = Settings(host="127.0.0.1", port=0, api_rate_per_s=0, access_log=False)
    gateway = Gateway(settings, example_registry(), parts)
    async with gateway.running(env.nats.url, env.postgres.url, token=TOKEN):
        paths = _paths(await _seed(gateway, env.postgres.url))
        say(f"bench api: {clients} clients at {rate_per_s:.0f} requests/s for {duration_s:.0f} s …")
        paced = await _child_load(gateway.api_url, paths, clients, rate_per_s, duration_s)
        say(f"bench api: {clients} clients back to back for {duration_s:.0f} s …")
        saturated = await _child_load(gateway.api_url, paths, clients, 0, duration_s)
    return {
        "concurrency": clients,
        "rate_per_s": rate_per_s,
        "p50_ms": paced["p50_ms"],
        "p99_ms": paced["p99_ms"],
        "paced": paced,
        "requests_per_s": saturated["requests_per_s"],
        "saturated": saturated,
        "endpoints": sorted(
            {p.split("?")[0] if "/runs/" not in p else "/api/v1/runs/{run_id}" for p in paths}
        ),
    }

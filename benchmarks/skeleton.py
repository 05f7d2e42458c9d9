"""Skeleton benchmark: no-op runs over HTTP through the whole path, API → queue →
worker → event → PostgreSQL, with client, gateway, worker and recorder in one process.

* ``runs_per_s``: N runs / the time from the first POST to the last
  ``execution.finished`` event seen; ``p50_ms`` / ``p99_ms``: POST sent →
  that run's event seen (at saturation: queueing behind the concurrent requests).
* ``runs_recorded_in_db_per_s``: N / the time from the first POST until the
  ``executions`` table holds a succeeded row for every run the API accepted
  (counted in PostgreSQL, not by the recorder); ``runs_missing_from_db``: the
  rows still missing when :data:`DB_DEADLINE_S` passed (then the rate is null).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
from nats.aio.msg import Msg

from agents.registry import example_registry
from agents.store.tenancy import ALL_TENANTS, tenant_scope
from benchmarks.harness import Servers, percentile, wait_until
from gateway.app import Gateway, InProcessWorker, Parts
from gateway.settings import Settings
from mesh import names
from mesh.envelope import decode

__all__ = ["DB_DEADLINE_S", "bench_skeleton"]

AGENT = "noop"
TOKEN = "bench"
EVENTS_DEADLINE_S = 120.0  # every finished event seen
DB_DEADLINE_S = 120.0  # every run's row in PostgreSQL, from the first POST

_COUNT_SUCCEEDED = "SELECT count(*) FROM executions WHERE run_id = ANY($1::text[]) AND status = 'succeeded'"


def _gateway(env: Servers) -> contextlib.AbstractAsyncContextManager[Gateway]:
    """The gateway of ``up`` (:mod:`gateway.app`) with the parts the run's path
    crosses: the API, the queue, the execution recorder and a noop worker in
    this process (no run index, maintenance or scheduler: off that path)."""
    assert env.postgres is not None
    parts = Parts(
        run_index=False,
        maintenance=False,
        scheduler=False,
        worker=InProcessWorker(agents=[AGENT], concurrency=128),
    )
    # A free port; no rate limit: the bench measures the path, not the limiter.
    settings = Settings(host="127.0.0.1", port=0, api_rate_per_s=0)
    return Gateway(settings, example_registry(), parts).running(env.nats.url, env.postgres.url, token=TOKEN)


async def _post_all(runs_url: str, runs: int, concurrency: int, sent: dict[int, float]) -> list[str]:
    """POST ``runs`` no-op runs, ``concurrency`` at a time; the run ids the API accepted."""
    gate = asyncio.Semaphore(concurrency)
    run_ids: list[str] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:

        async def submit(i: int) -> None:
            async with gate:
                sent[i] = time.perf_counter()  # before the POST: its event cannot come first
                async with http.post(runs_url, json={"input": {"echo": i}}) as resp:
                    if resp.status != 202:
                        raise RuntimeError(f"POST failed: {resp.status} {await resp.text()}")
                    run_ids.append(resp.headers["Location"].rsplit("/", 1)[1])

        await asyncio.gather(*(submit(i) for i in range(runs)))
    return run_ids


async def bench_skeleton(env: Servers, runs: int = 2000, concurrency: int = 64) -> dict[str, Any]:
    """N no-op runs over HTTP; latency = POST sent → execution.finished event seen."""
    sent: dict[int, float] = {}  # echo value -> POST time
    latencies: list[float] = []
    all_seen = asyncio.Event()

    async def on_finished(msg: Msg) -> None:
        t0 = sent.pop(decode(msg.data).payload["input"]["echo"], None)
        if t0 is not None:
            latencies.append((time.perf_counter() - t0) * 1000)
            if len(latencies) == runs:
                all_seen.set()

    async with _gateway(env) as gw:
        assert gw.nc is not None and gw.pool is not None
        pool = gw.pool
        sub = await gw.nc.subscribe(names.finished_subject(AGENT, "*"), cb=on_finished)
        start = time.perf_counter()
        run_ids = await _post_all(f"{gw.api_url}/api/v1/agents/{AGENT}/runs", runs, concurrency, sent)
        await asyncio.wait_for(all_seen.wait(), EVENTS_DEADLINE_S)
        elapsed = time.perf_counter() - start
        in_db = 0

        async def all_in_db() -> bool:
            nonlocal in_db
            async with tenant_scope(pool, ALL_TENANTS) as conn:  # the gateway's pool: row security binds it
                in_db = int(await conn.fetchval(_COUNT_SUCCEEDED, run_ids))
            return in_db == len(run_ids)

        with contextlib.suppress(TimeoutError):
            await wait_until(all_in_db, DB_DEADLINE_S - (time.perf_counter() - start), "rows in PostgreSQL")
        db_elapsed = time.perf_counter() - start
        await sub.unsubscribe()
    return {
        "runs": runs,
        "runs_per_s": round(runs / elapsed, 1),
        "runs_recorded_in_db_per_s": round(runs / db_elapsed, 1) if in_db == runs else None,
        "runs_missing_from_db": runs - in_db,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "http_concurrency": concurrency,
    }

"""``agent-factory bench``: throughput and latency, with the raw nats-py ceiling in the same run.

Every suite starts its own embedded servers in a temp dir, so numbers never
mix with a running ``up``. Ratios to the raw client measured seconds earlier
on the same server are what survive a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mesh import names
from mesh.embedded import NatsServer
from mesh.settings import Settings
from mesh.wire.connection import connect, jetstream

__all__ = ["percentile", "run_benchmarks"]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _say(text: str) -> None:
    click.echo(text, err=True)


@dataclass
class _Env:
    nats: NatsServer
    tmp: Path


@contextlib.asynccontextmanager
async def _servers() -> AsyncIterator[_Env]:
    with tempfile.TemporaryDirectory(prefix="af-bench-") as tmp:
        # AF_NATS_SYNC_INTERVAL applies, so its cost can be measured (docs/durability.md).
        nats = NatsServer(Path(tmp) / "nats", sync_interval=Settings().nats_sync_interval)
        nats.start()
        try:
            yield _Env(nats, Path(tmp))
        finally:
            nats.stop()


async def run_benchmarks(suite: str, count: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if suite in ("skeleton", "all"):
        _say("bench skeleton: no-op runs through API → queue → worker → event → PostgreSQL …")
        out["skeleton"] = await bench_skeleton(count or 2000)
    if suite in ("queue", "all"):
        from benchmarks.queue import bench_queue

        _say("bench queue: raw ceiling, end-to-end throughput, latency at 1,000 tasks/s …")
        out["queue"] = await bench_queue(count or 20_000)
    if suite in ("messaging", "all"):
        from benchmarks.messaging import bench_messaging

        _say("bench messaging …")
        async with _servers() as env:
            out["messaging"] = await bench_messaging(env.nats.url)
    if suite in ("streams", "all"):
        from streams.bench import bench_streams

        _say("bench streams …")
        async with _servers() as env:
            kwargs = {"events": count} if count else {}
            out["streams"] = await bench_streams(env.nats.url, **kwargs)
    return out if suite == "all" else out[suite]


async def bench_skeleton(runs: int, concurrency: int = 64) -> dict[str, Any]:
    """N no-op runs over HTTP; latency = POST sent → execution.finished event seen."""
    import aiohttp
    import asyncpg
    from aiohttp import web

    from agents.recorder import Recorder
    from agents.registry import example_registry
    from agents.runtime import worker_for
    from agents.store.embedded import EmbeddedPostgres
    from agents.store.migrations import apply_migrations
    from gateway.api import Services, create_app
    from mesh.envelope import decode
    from mesh.provision import provision
    from mesh.queue.producer import TaskQueue

    async with _servers() as env:
        pg = EmbeddedPostgres(env.tmp / "pg")
        await asyncio.to_thread(pg.start)
        try:
            pool = await asyncpg.create_pool(pg.url, min_size=1, max_size=8)
            async with pool.acquire() as conn:
                await apply_migrations(conn)
            nc = await connect(env.nats.url)
            js = await jetstream(nc)
            await provision(js)
            registry = example_registry()
            settings = Settings()
            queue = TaskQueue(nc, js)
            await queue.start()
            services = Services(nc, js, pool, registry, settings, queue)
            recorder = Recorder(nc, js, pool)
            await recorder.start()
            worker = worker_for(nc, js, registry, ["noop"], concurrency=128)
            await worker.start()
            runner = web.AppRunner(create_app(services, "bench"), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            sent: dict[int, float] = {}  # echo value -> POST time (set before the POST: no race)
            latencies: list[float] = []
            all_seen = asyncio.Event()

            async def on_finished(msg: Any) -> None:
                env_ = decode(msg.data)
                t0 = sent.pop(env_.payload["input"]["echo"], None)
                if t0 is not None:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if len(latencies) == runs:
                        all_seen.set()

            sub = await nc.subscribe(names.finished_subject("noop", "*"), cb=on_finished)
            url = f"http://127.0.0.1:{port}/api/v1/agents/noop/runs"
            headers = {"Authorization": "Bearer bench"}
            gate = asyncio.Semaphore(concurrency)
            async with aiohttp.ClientSession(headers=headers) as http:

                async def submit(i: int) -> None:
                    async with gate:
                        sent[i] = time.perf_counter()
                        async with http.post(url, json={"input": {"echo": i}}) as resp:
                            if resp.status != 202:
                                raise RuntimeError(f"POST failed: {resp.status} {await resp.text()}")

                start = time.perf_counter()
                await asyncio.gather(*(submit(i) for i in range(runs)))
                await asyncio.wait_for(all_seen.wait(), 120)
                elapsed = time.perf_counter() - start
                while recorder.recorded < runs:
                    await asyncio.sleep(0.01)
                db_elapsed = time.perf_counter() - start
            await sub.unsubscribe()
            await runner.cleanup()
            await worker.stop(5)
            await recorder.stop()
            await queue.stop()
            await nc.drain()
            await pool.close()
        finally:
            await asyncio.to_thread(pg.stop)
    return {
        "runs": runs,
        "runs_per_s": round(runs / elapsed, 1),
        "runs_recorded_in_db_per_s": round(runs / db_elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "http_concurrency": concurrency,
    }

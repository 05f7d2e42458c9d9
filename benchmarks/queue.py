"""Queue benchmark: end-to-end no-op tasks/s and enqueue-to-start latency, vs raw nats-py.

* ``ceiling_per_s``: raw nats-py on a bare work-queue stream, same count, same
  server, same process: pipelined ``publish_async`` of N messages, then
  ``fetch(500)`` + ``ack()`` until all are consumed; N / total time.
* ``tasks_per_s``: N no-op tasks through ``enqueue`` → worker → handler →
  ``execution.finished`` event (projected into the run state by the server)
  → ``ack_sync``, enqueuer and worker running at once; N / time from the
  first enqueue to the last confirmed ack (which follows its stored event).
* ``p50_ms`` / ``p99_ms``: enqueue call → handler start, with tasks offered at
  a fixed 1,000 tasks/s.
* Both throughputs are the best of three alternating rounds (all rounds are
  printed under ``rounds``).
* ``cpu_us_per_task``: CPU time per task of this process (``python``) and
  of nats-server (``server``, from ``/proc``; null elsewhere) during the
  best round of each side: where the time goes, on any machine.
* ``two_processes``: the same throughput comparison with producer and
  consumer in separate processes, for both the raw client and our path (the
  production topology).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from typing import Any, NamedTuple

import nats
from nats.js.api import RetentionPolicy, StreamConfig

from benchmarks.suites import _servers, percentile
from mesh.provision import provision
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.runtime import tune_gc
from mesh.wire.connection import connect, jetstream

__all__ = ["bench_queue"]


class _Round(NamedTuple):
    per_s: float
    python_us: float  # CPU of this process per task
    server_us: float | None  # CPU of nats-server per task (Linux only)


def _per_s(r: _Round) -> float:
    return r.per_s


class _CpuClock:
    """CPU seconds used by this process and by nats-server since ``start``."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid

    def _now(self) -> tuple[float, float | None]:
        own = resource.getrusage(resource.RUSAGE_SELF)
        server = None
        if self.server_pid is not None:
            try:
                with open(f"/proc/{self.server_pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                server = None
        return own.ru_utime + own.ru_stime, server

    def start(self) -> None:
        self._start = self._now()
        self._t0 = time.perf_counter()

    def stop(self, n: int) -> _Round:
        elapsed = time.perf_counter() - self._t0
        (own0, srv0), (own1, srv1) = self._start, self._now()
        server = (srv1 - srv0) * 1e6 / n if srv0 is not None and srv1 is not None else None
        return _Round(n / elapsed, (own1 - own0) * 1e6 / n, server)


async def _raw_ceiling(url: str, n: int, size: int = 256, server_pid: int | None = None) -> _Round:
    nc = await nats.connect(url, name="bench-raw")  # plain nats-py, none of our hooks
    js = await jetstream(nc)
    with contextlib.suppress(Exception):
        await js.delete_stream("RAW")
    await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"], retention=RetentionPolicy.WORK_QUEUE))
    body = b"x" * size
    clock = _CpuClock(server_pid)
    clock.start()
    window = 1000
    for i in range(0, n, window):
        futs = [await js.publish_async("raw.q", body) for _ in range(min(window, n - i))]
        await asyncio.gather(*futs)
    sub = await js.pull_subscribe("raw.q", durable="raw", stream="RAW")
    got = 0
    while got < n:
        msgs = await sub.fetch(500, timeout=5)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    await nc.flush()
    result = clock.stop(n)
    await js.delete_stream("RAW")
    await nc.drain()
    return result


async def _throughput(url: str, n: int, server_pid: int | None = None) -> _Round:
    nc = await connect(url, name="bench-queue")
    js = await jetstream(nc)
    await provision(js)

    async def noop(ctx: TaskContext) -> Any:
        return None

    worker = TaskWorker(nc, js, {"bench": (AgentQueueConfig("bench"), noop)}, concurrency=256)
    await worker.start()
    queue = TaskQueue(nc, js)
    await queue.start()
    clock = _CpuClock(server_pid)
    clock.start()
    window = 500
    for i in range(0, n, window):
        batch = min(window, n - i)
        await asyncio.gather(*(queue.enqueue(TaskSpec("bench", {"i": i + k})) for k in range(batch)))
    async with asyncio.timeout(300):
        while worker.completed < n:
            await asyncio.sleep(0.002)
    result = clock.stop(n)
    await queue.stop()
    await worker.stop(5)
    await nc.drain()
    return result


async def _latency(url: str, rate: int = 1000, seconds: float = 5.0) -> list[float]:
    nc = await connect(url, name="bench-latency")
    js = await jetstream(nc)
    lat: list[float] = []
    total = int(rate * seconds)
    all_started = asyncio.Event()

    async def record(ctx: TaskContext) -> Any:
        lat.append((time.perf_counter() - ctx.input["t0"]) * 1000)
        if len(lat) == total:
            all_started.set()

    worker = TaskWorker(nc, js, {"lat": (AgentQueueConfig("lat"), record)}, concurrency=64)
    await worker.start()
    queue = TaskQueue(nc, js)
    await queue.start()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    pending: set[asyncio.Task[Any]] = set()
    for i in range(total):
        target = begin + i / rate
        delay = target - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(queue.enqueue(TaskSpec("lat", {"t0": time.perf_counter()})))
        pending.add(t)
        t.add_done_callback(pending.discard)
    await asyncio.wait_for(all_started.wait(), 60)
    await asyncio.gather(*pending)  # every enqueue has also written its queued record
    await queue.stop()
    await worker.stop(5)
    await nc.drain()
    return lat


async def bench_queue(n: int = 20_000, rounds: int = 3) -> dict[str, Any]:
    """Raw ceiling and our path alternate for ``rounds`` rounds; each reports
    its best round, so a burst of load from elsewhere on the machine during
    one round does not decide the ratio. Every round is in ``rounds``."""
    ceilings: list[_Round] = []
    throughputs: list[_Round] = []
    async with _servers() as env:
        pid = env.nats.pid
        for _ in range(rounds):
            ceilings.append(await _raw_ceiling(env.nats.url, n, server_pid=pid))
            throughputs.append(await _throughput(env.nats.url, n, server_pid=pid))
        lat = await _latency(env.nats.url)
        split = await bench_queue_two_processes(env.nats.url, n)
    tasks, ceiling = max(throughputs, key=_per_s), max(ceilings, key=_per_s)

    def cpu(r: _Round) -> dict[str, float | None]:
        return {
            "python": round(r.python_us, 1),
            "server": None if r.server_us is None else round(r.server_us, 1),
        }

    return {
        "tasks": n,
        "nats_sync_interval": env.nats.sync_interval,
        "tasks_per_s": round(tasks.per_s, 1),
        "ceiling_per_s": round(ceiling.per_s, 1),
        "ratio": round(tasks.per_s / ceiling.per_s, 3),
        "rounds": {
            "tasks_per_s": [round(t.per_s) for t in throughputs],
            "ceiling_per_s": [round(c.per_s) for c in ceilings],
        },
        "cpu_us_per_task": {"ours": cpu(tasks), "raw": cpu(ceiling)},
        "p50_ms": round(percentile(lat, 50), 3),
        "p99_ms": round(percentile(lat, 99), 3),
        "latency_rate_per_s": 1000,
        "two_processes": split,
    }


# ---- two-process topology: producer and consumer in separate processes -------
#
# Production runs producers (gateway) and workers in different processes; so
# does this variant, for both the raw ceiling and our path, so the ratio
# compares like with like. Each side is `python -m benchmarks.queue ROLE URL N`.


async def _ready() -> None:
    """Tell the parent we are connected, then wait for its "go"."""
    import sys

    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)


async def _raw_producer(url: str, n: int, size: int = 256) -> None:
    nc = await nats.connect(url, name="bench-raw-producer")
    js = await jetstream(nc)
    body = b"x" * size
    await _ready()
    for i in range(0, n, 1000):
        futs = [await js.publish_async("raw2.q", body) for _ in range(min(1000, n - i))]
        await asyncio.gather(*futs)
    await nc.drain()


async def _raw_consumer(url: str, n: int) -> None:
    nc = await nats.connect(url, name="bench-raw-consumer")
    js = await jetstream(nc)
    sub = await js.pull_subscribe("raw2.q", durable="raw2", stream="RAW2")
    await _ready()
    got = 0
    while got < n:
        try:
            msgs = await sub.fetch(500, timeout=1)
        except TimeoutError:
            continue
        for m in msgs:
            await m.ack()
        got += len(msgs)
    await nc.flush()
    await nc.drain()


async def _our_producer(url: str, n: int) -> None:
    nc = await connect(url, name="bench-producer")
    js = await jetstream(nc)
    async with TaskQueue(nc, js) as queue:
        await _ready()
        for i in range(0, n, 500):
            await asyncio.gather(
                *(queue.enqueue(TaskSpec("bench2", {"i": i + k})) for k in range(min(500, n - i)))
            )
    await nc.drain()


async def _our_worker(url: str, n: int) -> None:
    nc = await connect(url, name="bench-worker")
    js = await jetstream(nc)
    done = asyncio.Event()
    count = 0

    async def noop(ctx: TaskContext) -> Any:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    worker = TaskWorker(nc, js, {"bench2": (AgentQueueConfig("bench2"), noop)}, concurrency=256)
    await worker.start()
    await _ready()
    await done.wait()
    await worker.stop(5)
    await nc.drain()


async def _two_processes(url: str, n: int, producer: str, consumer: str) -> float:
    """Both processes start, import, connect and say "ready"; the clock starts at "go"."""
    import sys

    async def spawn(role: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.queue", role, url, str(n),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"{role} did not start: {line!r}")
        return proc

    procs = [await spawn(consumer), await spawn(producer)]
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        await p.stdin.drain()
    codes = [await p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"bench processes failed: {codes}")
    return n / (time.perf_counter() - start)


async def bench_queue_two_processes(url: str, n: int) -> dict[str, float]:
    nc = await connect(url, name="bench-setup")
    js = await jetstream(nc)
    await js.add_stream(StreamConfig(name="RAW2", subjects=["raw2.>"], retention=RetentionPolicy.WORK_QUEUE))
    await provision(js)
    await nc.drain()
    ceiling = await _two_processes(url, n, "raw-producer", "raw-consumer")
    tasks = await _two_processes(url, n, "producer", "worker")
    return {
        "tasks_per_s": round(tasks, 1),
        "ceiling_per_s": round(ceiling, 1),
        "ratio": round(tasks / ceiling, 3),
    }


_ROLES = {
    "raw-producer": _raw_producer,
    "raw-consumer": _raw_consumer,
    "producer": _our_producer,
    "worker": _our_worker,
}

if __name__ == "__main__":
    import sys

    role, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    tune_gc()  # both roles, raw and ours, as the product's processes run
    asyncio.run(_ROLES[role](url, count))

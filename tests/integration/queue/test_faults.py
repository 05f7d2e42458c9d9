"""Crashes, drains and server restarts: nothing lost, nothing recorded twice."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import NatsServer
from mesh.envelope import decode
from mesh.provision import provision
from mesh.queue import dlq
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.wire.connection import connect, jetstream
from tests.helpers import unique

WORKER = Path(__file__).with_name("effect_worker.py")


class Starts:
    """Every handler start announced by effect_worker processes."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        run_id, attempt = msg.data.decode().split()
        self.seen.append((run_id, int(attempt)))
        self.changed.set()

    async def until(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self.changed.clear()
                await self.changed.wait()


async def spawn_worker(
    nc: Client, url: str, agent: str, ack_wait: float, conc: int
) -> subprocess.Popen[bytes]:
    ready = await nc.subscribe(f"test.ready.{agent}", max_msgs=1)
    args = [sys.executable, str(WORKER), url, agent, str(ack_wait), str(conc)]
    proc = subprocess.Popen(args)  # noqa: ASYNC220 - returns at once
    await ready.next_msg(timeout=30)
    return proc


async def finished_events(js: JetStreamContext, agent: str) -> collections.Counter[str]:
    """How many execution.finished events each run has in AF_EVENTS."""
    counts: collections.Counter[str] = collections.Counter()
    seq = 0
    subject = names.finished_subject(agent, "*")
    while True:
        try:
            raw = await js.get_msg(names.STREAM_EVENTS, seq=seq + 1, subject=subject, next=True)
        except Exception:
            return counts
        assert raw.data is not None and raw.seq is not None
        counts[decode(raw.data).payload["run_id"]] += 1
        seq = raw.seq


async def wait_all(js: JetStreamContext, run_ids: list[str], status: RunStatus, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        for run_id in run_ids:
            while True:
                state = await get_run(js, run_id)
                if state is not None and state.status == status:
                    break
                await asyncio.sleep(0.05)


async def test_kill_9_of_a_worker_mid_task_completes_each_task_exactly_once(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str
) -> None:
    agent = unique("kill9")
    starts = Starts()
    sub = await nc.subscribe(f"test.started.{agent}", cb=starts.on_msg)
    first = await spawn_worker(nc, nats_url, agent, ack_wait=2.0, conc=4)
    runs = [(await queue.enqueue(TaskSpec(agent, {"sleep": 0.4}))).run_id for _ in range(12)]
    await starts.until(4)
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed = {run_id for run_id, _ in starts.seen}
    second = await spawn_worker(nc, nats_url, agent, ack_wait=2.0, conc=4)
    try:
        await wait_all(mesh_js, runs, RunStatus.SUCCEEDED)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
        await sub.unsubscribe()
    events = await finished_events(mesh_js, agent)
    assert set(events) == set(runs) and set(events.values()) == {1}
    for run_id in killed:  # the crash really was mid-task: these ran again
        state = await get_run(mesh_js, run_id)
        assert state is not None and state.attempts >= 2


async def test_sigterm_drains_under_load_with_nothing_lost_or_run_twice(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, nats_url: str
) -> None:
    agent = unique("drain")
    starts = Starts()
    sub = await nc.subscribe(f"test.started.{agent}", cb=starts.on_msg)
    first = await spawn_worker(nc, nats_url, agent, ack_wait=30.0, conc=8)
    runs = [(await queue.enqueue(TaskSpec(agent, {"sleep": 0.3}))).run_id for _ in range(40)]
    await starts.until(8)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    second = await spawn_worker(nc, nats_url, agent, ack_wait=30.0, conc=8)
    try:
        await wait_all(mesh_js, runs, RunStatus.SUCCEEDED)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
        await sub.unsubscribe()
    per_run = collections.Counter(run_id for run_id, _ in starts.seen)
    assert set(per_run) == set(runs) and set(per_run.values()) == {1}  # no task ran twice
    events = await finished_events(mesh_js, agent)
    assert set(events.values()) == {1} and len(events) == 40


async def test_nats_restart_during_10k_idempotent_enqueue_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url)
    js = await jetstream(nc)
    await provision(js)
    executed: collections.Counter[str] = collections.Counter()
    all_done = asyncio.Event()
    total = 10_000

    async def handler(ctx: TaskContext) -> Any:
        executed[ctx.run_id] += 1
        if len(executed) == total:
            all_done.set()

    cfg = AgentQueueConfig("bulk", ack_wait_s=5.0, priorities=(2,))
    worker = TaskWorker(nc, js, {"bulk": (cfg, handler)}, concurrency=64, idle_poll_s=0.5)
    await worker.start()
    run_of: dict[int, str] = {}
    restarted = asyncio.Event()
    try:
        async with TaskQueue(nc, js) as q:

            async def submit(i: int) -> None:
                while True:  # a client that retries until its task is accepted
                    try:
                        queued = await q.enqueue(TaskSpec("bulk", {"i": i}, idempotency_key=f"k{i}"))
                    except Exception:
                        await asyncio.sleep(0.1)
                        continue
                    if i in run_of:
                        assert run_of[i] == queued.run_id
                    run_of[i] = queued.run_id
                    if len(run_of) == 3000 and not restarted.is_set():
                        restarted.set()
                        await asyncio.to_thread(server.restart)
                    return

            gate = asyncio.Semaphore(200)

            async def limited(i: int) -> None:
                async with gate:
                    await submit(i)

            await asyncio.gather(*(limited(i) for i in range(total)))
            assert restarted.is_set()
            # Retrying every key once more must return the same runs.
            for i in range(0, total, 997):
                assert (
                    await q.enqueue(TaskSpec("bulk", {"i": i}, idempotency_key=f"k{i}"))
                ).run_id == run_of[i]
        await asyncio.wait_for(all_done.wait(), 120)
        assert len(set(run_of.values())) == total
        assert set(executed) == set(run_of.values())
        # Tasks in flight at the restart may have run without their outcome being
        # stored; they come back after the ack wait and are recorded then.
        async with asyncio.timeout(60):
            while len(events := await finished_events(js, "bulk")) < total:
                await asyncio.sleep(0.5)
        assert set(events) == set(run_of.values()) and set(events.values()) == {1}
    finally:
        await worker.stop(5)
        await nc.close()
        server.stop()


async def test_poison_task_reaches_the_dlq_across_a_server_restart_and_replays(
    tmp_path: Path,
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await connect(server.url)
    js = await jetstream(nc)
    await provision(js)
    attempts: list[int] = []
    first_failure = asyncio.Event()
    fixed = False

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        first_failure.set()
        if not fixed:
            raise RuntimeError(f"poison {ctx.attempt}")
        return "ok"

    # A nak sent while the server is down is lost; the ack wait brings the task back.
    cfg = AgentQueueConfig(
        "poison", ack_wait_s=5.0, max_attempts=3, backoff_base_s=0.5, backoff_max_s=0.5, priorities=(2,)
    )
    worker = TaskWorker(nc, js, {"poison": (cfg, handler)}, idle_poll_s=0.3)
    await worker.start()
    try:
        async with TaskQueue(nc, js) as q:
            run_id = (await q.enqueue(TaskSpec("poison", {"x": 1}))).run_id
            await asyncio.wait_for(first_failure.wait(), 10)
            await asyncio.to_thread(server.restart)
            await wait_all(js, [run_id], RunStatus.FAILED, timeout=60)
            assert attempts == [1, 2, 3]
            [dead] = await dlq.list_dead_letters(js, name="poison")
            assert [e.error for e in dead.entry.errors] == ["poison 1", "poison 2", "poison 3"]
            # No zombie: nothing left to deliver, and nothing more runs.
            info = await js.consumer_info(names.STREAM_TASKS, names.task_consumer("poison", 2))
            assert info.num_pending == 0 and info.num_ack_pending == 0
            fixed = True
            await dlq.replay(js, dead.seq)
            await wait_all(js, [run_id], RunStatus.SUCCEEDED, timeout=30)
            assert attempts == [1, 2, 3, 1]
    finally:
        await worker.stop(5)
        await nc.close()
        server.stop()

"""The fleet-wide circuit breaker, end to end: finished events -> processor -> af_breakers -> workers.

Real nats-server (one per test), a real Faust processor, two task workers on
connections of their own."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from mesh import names
from mesh.embedded import NatsServer
from mesh.envelope import Priority, utcnow
from mesh.queue.breakers import (
    BreakerChanged,
    BreakerState,
    BreakerStatus,
    force_breaker,
    read_breaker,
    read_trials,
)
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import get_run
from mesh.queue.worker import TaskContext, TaskWorker
from tests.helpers import eventually, fleet
from tests.integration.processors.breaker_fleet import breaker_processor, publish_outcome, window_calls


def tripped(workers: list[TaskWorker], agent: str) -> bool:
    """Every worker has stopped taking ``agent``'s tasks (all its lanes closed)."""
    return all(lane.tripped for w in workers for lane in w.lanes if lane.agent == agent)


async def test_a_failing_agent_opens_its_breaker_and_every_worker_stops_within_1s_while_others_flow(
    own_nats: NatsServer, own_nc: Client, own_js: JetStreamContext
) -> None:
    ran: Counter[str] = Counter()

    async def count(ctx: TaskContext) -> dict[str, int]:
        ran[ctx.agent] += 1
        return {}

    async with (
        breaker_processor(own_nats.url, open_s=30) as (app, _),
        fleet(own_nats.url, {"flaky": count, "steady": count}) as workers,
    ):
        await publish_outcome(own_js, "flaky", 0, failed=False)
        for i in range(1, 4):
            await publish_outcome(own_js, "flaky", i, failed=True)
        await eventually(lambda: window_calls(app, "flaky") == 4, 30, "4 calls in the window")
        assert not tripped(workers, "flaky")  # 3 of 4 failed, but fewer than 5 calls: no decision

        events = await own_nc.subscribe(names.breaker_subject("flaky"))
        t0 = time.perf_counter()
        await publish_outcome(own_js, "flaky", 4, failed=True)  # 4 of 5 failed: over 50 %
        await eventually(lambda: tripped(workers, "flaky"), 5, "both workers stopped taking it", every=0.002)
        reaction = time.perf_counter() - t0
        assert reaction < 1.0, f"{reaction:.3f} s from the crossing event to every worker stopped"

        state, _ = await read_breaker(own_js, "flaky")
        assert state.state == BreakerStatus.OPEN and "4 of 5 calls failed" in state.reason
        event = BreakerChanged.model_validate_json((await events.next_msg(timeout=5)).data)
        assert (event.previous, event.state.state, event.by) == ("closed", "open", "processor")
        info = await own_js.consumer_info(names.STREAM_TASKS, names.task_consumer("flaky", Priority.NORMAL))
        assert info.paused  # tasks wait in the queue, not delivered to anyone

        async with TaskQueue(own_nc, own_js) as queue:
            for i in range(5):
                await queue.enqueue(TaskSpec("flaky", {"i": i}))
                await queue.enqueue(TaskSpec("steady", {"i": i}))
            await eventually(lambda: ran["steady"] == 5, 15, "the other agent's tasks ran")
        assert ran["flaky"] == 0  # none of the open agent's
        assert all(lane.tripped for w in workers for lane in w.lanes if lane.agent == "flaky")


async def test_half_open_admits_exactly_n_trials_across_two_workers_then_recovery_closes(
    own_nats: NatsServer, own_nc: Client, own_js: JetStreamContext
) -> None:
    during: Counter[str] = Counter()  # runs started, by the breaker state their worker saw
    workers: list[TaskWorker] = []

    async def recovered(ctx: TaskContext) -> dict[str, int]:
        worker = next(w for w in workers if ctx.run_id in _running(w))
        assert worker.breakers is not None
        during[worker.breakers.values["flaky"].state] += 1
        return {}

    async with (
        breaker_processor(own_nats.url, open_s=1.5, trials=3) as _,
        fleet(own_nats.url, {"flaky": recovered}) as started,
    ):
        workers.extend(started)
        for i in range(6):
            await publish_outcome(own_js, "flaky", i, failed=True)
        await eventually(lambda: tripped(workers, "flaky"), 15, "the breaker opened")
        async with TaskQueue(own_nc, own_js) as queue:
            runs = [(await queue.enqueue(TaskSpec("flaky", {"i": i}))).run_id for i in range(12)]
        # Open for 1.5 s, then half-open: three trials (across both workers), which
        # succeed, so it closes and the other nine run.
        await eventually(lambda: sum(during.values()) == 12, 30, "all 12 ran")
        state, _ = await read_breaker(own_js, "flaky")
        assert state.state == BreakerStatus.CLOSED and state.reason == "3 trials passed"
        claims, _ = await read_trials(own_js, "flaky")
        assert claims is not None and len(claims.runs) == 3
        assert during[BreakerStatus.HALF_OPEN] == 3, during
        assert during[BreakerStatus.OPEN] == 0, during
        # Deliveries refused for want of a trial went back unstarted: every run took one attempt.
        assert (REGISTRY.get_sample_value("af_fleet_breaker_refused_total", {"agent": "flaky"}) or 0) > 0
        assert [(await get_run(own_js, run)).attempts for run in runs] == [1] * 12  # type: ignore[union-attr]


async def test_deliveries_that_arrive_for_an_open_breaker_go_back_unstarted_and_are_not_attempts(
    own_nats: NatsServer, own_nc: Client, own_js: JetStreamContext
) -> None:
    """A pull already out when the breaker opens may still deliver (before the consumer
    pause, or a pause that failed): the worker hands it back, recorded as returned."""
    ran: Counter[str] = Counter()

    async def count(ctx: TaskContext) -> dict[str, int]:
        ran[ctx.run_id] += 1
        return {}

    async with fleet(own_nats.url, {"flaky": count}, workers=1, idle_poll_s=10, priorities=(2,)) as workers:
        await eventually(lambda: workers[0].lanes[0].source.outstanding, 10, "an idle pull waiting")
        kv = await own_js.key_value(names.BUCKET_BREAKERS)  # open, and no consumer pause
        opened = BreakerState(agent="flaky", state=BreakerStatus.OPEN, since=utcnow(), reason="test", epoch=1)
        await kv.put("state.flaky", opened.model_dump_json().encode())
        await eventually(lambda: tripped(workers, "flaky"), 5, "the worker stopped taking flaky")
        async with TaskQueue(own_nc, own_js) as queue:
            run = (await queue.enqueue(TaskSpec("flaky", {}))).run_id  # delivered to the pull still out

        async def returned() -> int:
            state = await get_run(own_js, run)
            return state.returned if state is not None else 0

        await eventually(returned, 10, "the delivery handed back")
        assert not ran
        await force_breaker(own_js, "flaky", False, "test", "over")
        await eventually(lambda: ran[run] == 1, 10, "it ran once the breaker closed")
        await eventually(lambda: _attempts(own_js, run), 10, "its outcome")
        assert await _attempts(own_js, run) == 1


async def _attempts(js: JetStreamContext, run: str) -> int:
    state = await get_run(js, run)
    return state.attempts if state is not None and state.status.finished else 0


def _running(worker: TaskWorker) -> set[str]:
    """The run ids ``worker`` has started and not finished (a test's way to find who runs what)."""
    return {item.task.id for item in worker._inflight.values() if item.task is not None}


async def test_a_failing_canary_version_stops_its_own_workers_while_the_stable_version_serves(
    own_nats: NatsServer, own_nc: Client, own_js: JetStreamContext
) -> None:
    ran: Counter[str] = Counter()

    def counting(version: str) -> Callable[[TaskContext], Awaitable[dict[str, int]]]:
        async def count(ctx: TaskContext) -> dict[str, int]:
            ran[version] += 1
            return {}

        return count

    async with (
        breaker_processor(own_nats.url, open_s=30) as (app, _),
        fleet(own_nats.url, {"shop": counting("1.0.0")}, workers=1, version="1.0.0") as stable,
        fleet(own_nats.url, {"shop": counting("2.0.0")}, workers=1, version="2.0.0") as canary,
    ):
        n = 0
        for i in range(5):  # a 20 % canary that fails every call: 20 % failed overall
            for _ in range(4):
                await publish_outcome(own_js, "shop", n, failed=False, version="1.0.0")
                n += 1
            if i == 4:
                await eventually(lambda: window_calls(app, "shop") == 24, 30, "24 calls in the window")
                assert not tripped(canary, "shop")
                t0 = time.perf_counter()
            await publish_outcome(own_js, "shop", n, failed=True, version="2.0.0")
            n += 1
        await eventually(lambda: tripped(canary, "shop"), 5, "the canary's worker stopped", every=0.002)
        reaction = time.perf_counter() - t0
        assert reaction < 1.0, f"{reaction:.3f} s from the crossing event to the canary's worker stopped"
        assert not tripped(stable, "shop")

        state, _ = await read_breaker(own_js, "shop", "2.0.0")
        assert (state.state, state.version, state.reason) == (
            "open",
            "2.0.0",
            "5 of 5 calls failed (100% >= 50%)",
        )
        assert (await read_breaker(own_js, "shop"))[0].state == "closed"
        info = await own_js.consumer_info(names.STREAM_TASKS, names.task_consumer("shop", Priority.NORMAL))
        assert not info.paused  # shared with the stable version's workers

        async with TaskQueue(own_nc, own_js) as queue:
            for i in range(6):
                await queue.enqueue(TaskSpec("shop", {"i": i}))
            await eventually(lambda: ran["1.0.0"] == 6, 15, "the stable version ran them all")
        assert ran["2.0.0"] == 0

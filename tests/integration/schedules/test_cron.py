"""Server-side cron schedules relayed into the task queue, exactly once per tick."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from itertools import pairwise

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.schedules.definitions import register_cron
from mesh.schedules.scheduler import CronSchedule, Scheduler, add_definition, remove_definition
from tests.helpers import eventually, unique

from .conftest import read_tasks, task_count

MakeScheduler = Callable[[], Awaitable[Scheduler]]


async def test_every_second_gives_one_task_per_tick_with_two_replicas(
    nc: Client, mesh_js: JetStreamContext, make_scheduler: MakeScheduler
) -> None:
    a, b = await make_scheduler(), await make_scheduler()
    agent = unique("cron")
    sched = CronSchedule(name=agent, agent=agent, cron="@every 1s", input={"x": 1},
                         tenant="acme")  # fmt: skip
    await add_definition(mesh_js, sched)
    try:
        await eventually(lambda: _at_least(mesh_js, agent, 4), timeout=10)
    finally:
        await remove_definition(mesh_js, sched.name)
    tasks = await read_tasks(nc, mesh_js, agent)
    keys = [t.payload["idempotency_key"] for t in tasks]
    assert len(tasks) >= 4 and len(set(keys)) == len(keys)
    assert all(k.startswith(f"schedule:{agent}:") for k in keys)
    assert all(t.payload["input"] == {"x": 1} and t.metadata.tenant == "acme" for t in tasks)
    # One task per tick: consecutive tasks are about a tick apart, never a pair at once.
    times = sorted(t.created_at for t in tasks)
    gaps = [(later - earlier).total_seconds() for earlier, later in pairwise(times)]
    assert min(gaps) > 0.5, gaps
    assert a.stats["duplicate"] + b.stats["duplicate"] == 0
    assert a.stats["enqueued"] + b.stats["enqueued"] >= len(tasks)


async def _at_least(js: JetStreamContext, agent: str, n: int) -> bool:
    return bool(await task_count(js, agent) >= n)


async def test_removing_a_schedule_stops_it(mesh_js: JetStreamContext, make_scheduler: MakeScheduler) -> None:
    await make_scheduler()
    agent = unique("cron-rm")
    await add_definition(mesh_js, CronSchedule(name=agent, agent=agent, cron="@every 1s"))
    await eventually(lambda: _at_least(mesh_js, agent, 1), timeout=5)
    await remove_definition(mesh_js, agent)
    info = await mesh_js.stream_info(
        names.STREAM_SCHEDULES, subjects_filter=names.schedule_def_subject(agent)
    )
    assert not info.state.subjects  # the server no longer holds the schedule
    before = await task_count(mesh_js, agent)
    # Observe two and a half ticks: nothing more may arrive.
    try:
        await eventually(lambda: _at_least(mesh_js, agent, before + 1), timeout=2.5)
    except AssertionError:
        pass
    else:
        raise AssertionError("a removed schedule still fired")


async def test_backlog_after_scheduler_downtime_is_coalesced_to_one_task(
    mesh_js: JetStreamContext, make_scheduler: MakeScheduler
) -> None:
    agent = unique("cron-late")
    subject = names.schedule_fire_subject(agent)

    async def fired() -> int:
        info = await mesh_js.stream_info(names.STREAM_SCHEDULES, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    # No scheduler running: firings pile up on the server.
    sched = CronSchedule(name=agent, agent=agent, cron="@every 1s")
    await add_definition(mesh_js, sched)
    try:
        await eventually(lambda: _ge(fired, 3), timeout=6)
        # Freeze the schedule (its next tick a year away) so no tick races the relay.
        await register_cron(mesh_js, sched.model_copy(update={"cron": "@yearly"}))
        piled = await fired()
        scheduler = await make_scheduler()
        await eventually(lambda: _eq(fired, 0), timeout=5)
        assert await task_count(mesh_js, agent) == 1
        assert scheduler.stats["coalesced"] == piled - 1
    finally:
        await remove_definition(mesh_js, agent)


async def _ge(f: Callable[[], Awaitable[int]], n: int) -> bool:
    return await f() >= n


async def _eq(f: Callable[[], Awaitable[int]], n: int) -> bool:
    return await f() == n

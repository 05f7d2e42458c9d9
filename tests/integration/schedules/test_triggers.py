"""Event triggers: one task per matching event on AF_EVENTS, across replicas."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.envelope import CONTENT_TYPE, JSON, Envelope, Priority, encode
from mesh.schedules.scheduler import EventTrigger, Scheduler, add_definition, remove_definition
from tests.helpers import eventually, unique

from .conftest import read_tasks, task_count

MakeScheduler = Callable[[], Awaitable[Scheduler]]


async def publish_event(js: JetStreamContext, subject: str, payload: object) -> None:
    env = Envelope(type="test.event", payload=payload)
    await js.publish(subject, encode(env), headers={CONTENT_TYPE: JSON})


async def test_each_matching_event_enqueues_exactly_one_task_with_two_replicas(
    nc: Client, mesh_js: JetStreamContext, make_scheduler: MakeScheduler
) -> None:
    agent = unique("trig")
    base = f"{names.EVENTS_PREFIX}.test.{agent}"
    trigger = EventTrigger(name=agent, agent=agent, on=f"{base}.*", input={"mode": "fast"},
                           priority=Priority.HIGH)  # fmt: skip
    a, b = await make_scheduler(), await make_scheduler()
    await add_definition(mesh_js, trigger)
    try:
        await eventually(lambda: _both_follow(a, b, agent), timeout=5)
        for i in range(6):
            await publish_event(mesh_js, f"{base}.site{i}", {"i": i})
        for i in range(3):  # not matching: other token count / other prefix
            await publish_event(mesh_js, f"{base}.site{i}.extra", {"i": -1})
            await publish_event(mesh_js, f"{base}-other.site{i}", {"i": -1})
        await eventually(lambda: _processed(mesh_js, agent), timeout=10)
    finally:
        await remove_definition(mesh_js, agent)
    assert await task_count(mesh_js, agent, priority=int(Priority.HIGH)) == 6
    assert await task_count(mesh_js, agent) == 0
    assert a.stats["duplicate"] + b.stats["duplicate"] == 0


async def _both_follow(a: Scheduler, b: Scheduler, name: str) -> bool:
    return name in a.triggers and name in b.triggers


async def _processed(js: JetStreamContext, agent: str) -> bool:
    info = await js.consumer_info(names.STREAM_EVENTS, names.trigger_consumer(agent))
    return bool(info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq)


async def test_task_input_carries_the_event_and_removal_stops_the_trigger(
    nc: Client, mesh_js: JetStreamContext, make_scheduler: MakeScheduler
) -> None:
    agent = unique("trig-in")
    subject = f"{names.EVENTS_PREFIX}.execution.finished.{agent}-upstream.r1"
    await make_scheduler()
    # Added while the scheduler runs, and no wait for it: the consumer exists
    # once add returns, so this event is not missed.
    await add_definition(mesh_js, EventTrigger(name=agent, agent=agent, on=subject,
                                               input={"threshold": 3}))  # fmt: skip
    await publish_event(mesh_js, subject, {"run_id": "r1", "status": "succeeded"})
    await eventually(lambda: _count_is(mesh_js, agent, 1), timeout=10)
    [task] = await read_tasks(nc, mesh_js, agent)
    event = task.payload["input"]["event"]
    assert task.payload["input"]["threshold"] == 3
    assert event["subject"] == subject and event["type"] == "test.event"
    assert event["payload"] == {"run_id": "r1", "status": "succeeded"}
    assert task.payload["idempotency_key"] == f"trigger:{agent}:{event['seq']}"

    await remove_definition(mesh_js, agent)
    names_now = {c.name for c in await mesh_js.consumers_info(names.STREAM_EVENTS)}
    assert names.trigger_consumer(agent) not in names_now
    await publish_event(mesh_js, subject, {"run_id": "r2"})
    try:
        await eventually(lambda: _count_is(mesh_js, agent, 2), timeout=1.5)
    except AssertionError:
        pass
    else:
        raise AssertionError("a removed trigger still enqueued")


async def _count_is(js: JetStreamContext, agent: str, n: int) -> bool:
    return bool(await task_count(js, agent) == n)

"""Smoke tests of the platform on a 3-node JetStream cluster with R3 streams and buckets.

Every test crosses nodes: the producer, the worker (or subscriber, or
server) and the reader are connected to different nodes. The fault tests
(nodes killed, paused, restarted under load) build on these.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import APIError

from mesh import names
from mesh.channels.errors import NoResponders
from mesh.channels.messaging import Mesh
from mesh.channels.subscriptions import DurableOptions
from mesh.cluster import NatsCluster
from mesh.envelope import Envelope
from mesh.errors import WRONG_LAST_SEQUENCE
from mesh.provision import ProvisionConfig, bucket_configs, stream_configs
from mesh.queue import dlq
from mesh.queue.maintenance import QueueMaintenance
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run, run_key
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from mesh.schedules.scheduler import CronSchedule, Scheduler, add_definition, remove_definition
from mesh.wire.connection import connect
from mesh.wire.protocol import EMPTY_HEADERS, expect_last_subject_seq
from mesh.wire.publisher import parse_puback
from mesh.wire.puller import Puller
from tests.helpers import eventually, unique

from .conftest import REPLICAS, Node

FAST = DurableOptions(max_attempts=3, ack_timeout_s=2.0, backoff_s=(0.05,), poll_s=1.0)


async def test_every_stream_and_bucket_has_three_replicas_and_a_leader(
    clients: list[Node], provisioned: NatsCluster
) -> None:
    buckets = [names.kv_stream(b.bucket) for b in bucket_configs(_r3())]
    streams = [s.name for s in stream_configs(_r3())] + buckets
    for stream in streams:
        assert stream is not None
        info = await clients[1].js.stream_info(stream)
        assert info.config.num_replicas == REPLICAS, stream
        assert info.cluster is not None and info.cluster.leader, stream
        assert len(info.cluster.replicas or []) == REPLICAS - 1, stream
        assert provisioned.leader_of(stream) == provisioned.index_of(info.cluster.leader), stream


async def test_a_task_enqueued_on_one_node_runs_on_a_worker_of_another_and_its_outcome_is_in_kv(
    clients: list[Node],
) -> None:
    producer, worker_node, reader = clients
    agent = unique("r3-echo")
    ran: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.run_id)
        return {"doubled": ctx.input["x"] * 2}

    worker = TaskWorker(worker_node.nc, worker_node.js, {agent: (AgentQueueConfig(agent), handler)})
    await worker.start()
    try:
        async with TaskQueue(producer.nc, producer.js) as queue:
            queued = await queue.enqueue(TaskSpec(agent=agent, input={"x": 21}))
        state = await eventually(lambda: _final(reader, queued.run_id), timeout=15, what="the run's outcome")
    finally:
        await worker.stop()
    assert state.status == RunStatus.SUCCEEDED
    assert state.result == {"doubled": 42}
    assert ran == [queued.run_id]
    # The outcome is the finished event (AF_EVENTS) and, by sourcing, the run's KV state.
    event = await reader.js.get_last_msg(names.STREAM_EVENTS, names.finished_subject(agent, queued.run_id))
    assert event.data
    info = await reader.js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_task_failing_every_attempt_is_dead_lettered_and_readable_on_another_node(
    clients: list[Node],
) -> None:
    producer, worker_node, reader = clients
    agent = unique("r3-dlq")

    async def handler(ctx: TaskContext) -> Any:
        raise RuntimeError("downstream unavailable")

    cfg = AgentQueueConfig(agent, max_attempts=2, backoff_base_s=0.05, backoff_max_s=0.05)
    worker = TaskWorker(worker_node.nc, worker_node.js, {agent: (cfg, handler)}, idle_poll_s=0.2)
    await worker.start()
    try:
        async with TaskQueue(producer.nc, producer.js) as queue:
            queued = await queue.enqueue(TaskSpec(agent=agent, input={"x": 1}))
        state = await eventually(lambda: _final(reader, queued.run_id), timeout=15, what="the run's outcome")
        [dead] = await eventually(
            lambda: dlq.list_dead_letters(reader.js, name=agent), timeout=5, what="the dead letter"
        )
    finally:
        await worker.stop(2)
    assert state.status == RunStatus.FAILED
    assert dead.entry.run_id == queued.run_id
    shown = await dlq.get_dead_letter(reader.js, dead.seq)
    assert [e.attempt for e in shown.entry.errors] == [1, 2]
    assert shown.entry.errors[-1].error == "downstream unavailable"
    info = await reader.js.consumer_info(names.STREAM_TASKS, names.task_consumer(agent, 2))
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_task_past_max_deliveries_is_moved_to_the_dlq_by_a_mover_on_another_node(
    clients: list[Node],
) -> None:
    producer, worker_node, mover_node = clients
    agent = unique("r3-maxdel")
    lane = names.task_consumer(agent, 2)
    # The server's backstop (max_deliver) reached at once: one delivery allowed.
    await worker_node.js.add_consumer(
        names.STREAM_TASKS,
        ConsumerConfig(
            durable_name=lane, filter_subject=names.task_subject(agent, 2),
            ack_policy=AckPolicy.EXPLICIT, ack_wait=1.0, max_deliver=1,
        ),
    )  # fmt: skip
    async with TaskQueue(producer.nc, producer.js) as queue:
        queued = await queue.enqueue(TaskSpec(agent=agent, input={"x": 1}))
    # A "worker" on node 1 takes the task and dies: it never acks.
    dead_worker = Puller(worker_node.nc, names.STREAM_TASKS, lane)
    waiting = Puller(worker_node.nc, names.STREAM_TASKS, lane)
    mover = QueueMaintenance(
        mover_node.nc, mover_node.js, expiry_interval_s=3600, stats_interval_s=3600, poll_s=0.2
    )
    await dead_worker.start()
    await waiting.start()
    await mover.start()
    try:
        assert len(await eventually(lambda: dead_worker.take(1), timeout=10, what="the delivery")) == 1

        async def moved() -> Any:
            # The advisory is only sent while a pull waits on the consumer;
            # AF_ADVISORIES (R3) keeps it for the mover on node 2.
            await waiting.wait(1, 0.3)
            return await _final(mover_node, queued.run_id)

        state = await eventually(moved, timeout=20, what="the run dead-lettered by the mover")
    finally:
        await mover.stop()
        await dead_worker.close()
        await waiting.close()
    assert state.status == RunStatus.FAILED
    assert state.errors[-1].error_type == "MaxDeliveries" and mover.moved >= 1
    [dead] = await dlq.list_dead_letters(producer.js, name=agent)
    assert dead.entry.run_id == queued.run_id and dead.entry.reason == "max deliveries reached"
    info = await producer.js.stream_info(
        names.STREAM_TASKS, subjects_filter=f"{names.TASKS_PREFIX}.{agent}.>"
    )
    assert not info.state.subjects  # the original is gone: no zombie redelivery


async def test_a_durable_channel_message_sent_on_one_node_is_delivered_on_another(
    clients: list[Node],
) -> None:
    channel = f"durable:{unique('r3ch').replace('-', '')}"
    got: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()

    async def handle(env: Envelope) -> None:
        if not got.done():
            got.set_result(env)

    async with (
        Mesh(clients[0].nc, agent="sender") as sender,
        Mesh(clients[1].nc, agent="receiver") as receiver,
    ):
        seq = await sender.send_durable(channel, {"kg_co2e": 12.5}, type="carbon.result")
        await receiver.subscribe(channel, handle, options=FAST)
        env = await asyncio.wait_for(got, 15)
    assert seq > 0
    assert env.payload == {"kg_co2e": 12.5} and env.source == "sender"


async def test_a_request_on_one_node_is_answered_by_an_agent_on_another(clients: list[Node]) -> None:
    agent = unique("r3-rpc")

    async def double(env: Envelope) -> Any:
        return {"value": env.payload["value"] * 2}

    async with Mesh(clients[2].nc, agent=agent) as server, Mesh(clients[0].nc, agent="caller") as caller:
        await server.serve(agent, double)
        await clients[2].nc.flush()
        # The serving subscription reaches node 0 by route gossip: not at once.
        reply = await eventually(lambda: _ask(caller, agent), timeout=5, what="a reply across nodes")
    assert reply.payload == {"value": 42}
    assert reply.message_type == "RESPONSE"


async def test_a_schedule_registered_on_one_node_fires_into_the_queue(clients: list[Node]) -> None:
    agent = unique("r3-cron")
    owner, registrar, reader = clients
    async with TaskQueue(owner.nc, owner.js) as queue:
        scheduler = Scheduler(owner.nc, owner.js, queue, refresh_s=0.2, idle_s=0.5)
        await scheduler.start()
        try:
            await add_definition(registrar.js, CronSchedule(name=agent, agent=agent, cron="@every 1s"))
            try:
                await eventually(lambda: _waiting(reader, agent), timeout=15, what="a task from the schedule")
            finally:
                await remove_definition(registrar.js, agent)
        finally:
            await scheduler.stop()
    assert scheduler.stats["enqueued"] >= 1 and scheduler.stats["duplicate"] == 0


async def test_a_client_can_be_given_every_node_url(provisioned: NatsCluster) -> None:
    nc = await connect(",".join(provisioned.urls), name="pytest-all-nodes", initial_attempts=1)
    await nc.close()


def _r3() -> ProvisionConfig:
    return ProvisionConfig(replicas=REPLICAS)


async def _final(node: Node, run_id: str) -> Any:
    state = await get_run(node.js, run_id)
    return state if state is not None and state.status.finished else None


async def _ask(caller: Mesh, agent: str) -> Envelope | None:
    try:
        return await caller.request(agent, {"value": 21}, 2)
    except NoResponders:
        return None


async def _waiting(node: Node, agent: str) -> int:
    subject = names.task_subject(agent, 2)
    info = await node.js.stream_info(names.STREAM_TASKS, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def test_a_mesh_starting_on_r3_keeps_the_channel_stream_at_three_replicas(clients: list[Node]) -> None:
    async with Mesh(clients[1].nc, agent="late-joiner"):
        pass
    info = await clients[2].js.stream_info(names.STREAM_CHANNELS)
    assert info.config.num_replicas == REPLICAS


async def test_a_lost_compare_and_set_on_r3_is_read_as_lost_not_as_an_error(clients: list[Node]) -> None:
    """On a clustered stream the leader refuses a create-only write racing one
    still being replicated with 10164 ("wrong last sequence", its pre-check),
    not 10071 as one server does; a later stale one gets 10071. The queued
    record's create (a worker wrote the state first) and every CAS site of the
    queue must read both as "lost the race", not as an error."""
    node = clients[1]
    async with TaskQueue(node.nc, node.js) as queue:
        codes: set[int] = set()
        for _ in range(20):
            key, create_only = run_key(unique("cas")), expect_last_subject_seq(EMPTY_HEADERS, 0)
            replies = [await queue.pipeline.request(key, b"{}", create_only) for _ in range(3)]
            for reply in replies:
                try:
                    parse_puback(await reply)
                except APIError as exc:
                    codes.add(int(exc.err_code or 0))
        print(f"\n[R3 create-only races refused with {sorted(codes)}]")
        assert codes and codes <= WRONG_LAST_SEQUENCE, codes
        run_id = unique("cas")
        await queue._create_record(run_id, b'{"status":"queued"}')
        await queue._create_record(run_id, b'{"status":"queued"}')  # taken as already written

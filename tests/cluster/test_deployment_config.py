"""deployment/nats/ is a 3-node JetStream cluster that starts, takes the platform's R3
streams, and keeps an agent's credentials to its own subjects."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh import names
from mesh.embedded import find_free_port, nats_server_binary
from mesh.envelope import utcnow
from mesh.provision import ProvisionConfig, provision
from mesh.queue import dlq
from mesh.queue.breakers import (
    BreakerState,
    BreakerStatus,
    change_breaker,
    claim_trial,
    closed_breaker,
    follow_breakers,
)
from mesh.queue.budgets import Quota, put_limit
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.runs import RunStatus, get_run
from mesh.queue.slots import ConcurrencyQuotas
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import eventually, eventually_sync

CONFIG = Path(__file__).parents[2] / "deployment" / "nats"
NODES = ("nats-0", "nats-1", "nats-2")
PASSWORDS = {
    "AF_NATS_PLATFORM_PASSWORD": "platform-secret",
    "AF_NATS_AGENT_FUEL_COMBUSTION_PASSWORD": "agent-secret",
    "AF_NATS_SYS_PASSWORD": "sys-secret",
}


@pytest.mark.parametrize("node", NODES)
def test_each_node_file_is_valid(node: str) -> None:
    checked = subprocess.run(
        [str(nats_server_binary()), "-c", str(CONFIG / f"{node}.conf"), "-t"],
        capture_output=True, text=True, timeout=30, env={**os.environ, **PASSWORDS},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr + checked.stdout


class Deployed:
    """The three files started on loopback: the same text, hosts and ports replaced."""

    def __init__(self, base: Path) -> None:
        self.client = {node: find_free_port() for node in NODES}
        self.monitor = {node: find_free_port() for node in NODES}
        self.route = {node: find_free_port() for node in NODES}
        self.base = base
        self.procs: list[subprocess.Popen[bytes]] = []

    def write(self, node: str) -> Path:
        here = self.base / node
        here.mkdir(parents=True)
        shutil.copy(CONFIG / "accounts.conf", here)
        shutil.copy(CONFIG / f"{node}.conf", here)
        text = (CONFIG / "cluster.conf").read_text()
        swaps = {
            "listen: 0.0.0.0:4222": f"listen: 127.0.0.1:{self.client[node]}",
            "http: 0.0.0.0:8222": f"http: 127.0.0.1:{self.monitor[node]}",
            "listen: 0.0.0.0:6222": f"listen: 127.0.0.1:{self.route[node]}",
            "store_dir: /data/jetstream": f"store_dir: {json.dumps(str(here / 'jetstream'))}",
            **{f"nats-route://{peer}:6222": f"nats-route://127.0.0.1:{self.route[peer]}" for peer in NODES},
        }
        for old, new in swaps.items():
            assert text.count(old) == 1, f"cluster.conf no longer has {old!r} once: update this test"
            text = text.replace(old, new)
        (here / "cluster.conf").write_text(text)
        return here / f"{node}.conf"

    def start(self) -> None:
        for node in NODES:
            log = self.base / f"{node}.log"
            self.procs.append(subprocess.Popen(
                [str(nats_server_binary()), "-c", str(self.write(node)), "-l", str(log)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, **PASSWORDS},
            ))  # fmt: skip
        eventually_sync(self.meta_leader, timeout=20, what="a meta leader named by all three nodes")

    def meta_leader(self) -> str | None:
        leaders = set()
        for node in NODES:
            try:
                url = f"http://127.0.0.1:{self.monitor[node]}/jsz"
                with urllib.request.urlopen(url, timeout=0.5) as response:
                    leaders.add((json.load(response).get("meta_cluster") or {}).get("leader"))
            except OSError:
                return None
        return leaders.pop() if len(leaders) == 1 and None not in leaders else None

    def url(self, node: str, user: str, password: str) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.client[node]}"

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[Deployed]:
    cluster = Deployed(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def test_the_cluster_takes_the_platforms_r3_streams_and_an_agent_keeps_to_its_subjects(
    deployed: Deployed,
) -> None:
    platform = await nats.connect(deployed.url("nats-0", "platform", PASSWORDS["AF_NATS_PLATFORM_PASSWORD"]))
    try:
        js = platform.jetstream(timeout=10)
        await provision(js, ProvisionConfig(replicas=3))
        info = await js.stream_info(names.STREAM_TASKS)
        assert info.config.num_replicas == 3 and info.cluster is not None
        assert (await js.account_info()).domain == "agent-factory"
    finally:
        await platform.close()

    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    agent_url = deployed.url(
        "nats-1", "agent-fuel-combustion", PASSWORDS["AF_NATS_AGENT_FUEL_COMBUSTION_PASSWORD"]
    )
    agent = await nats.connect(agent_url, error_cb=on_error)
    try:
        await agent.publish(names.finished_subject("fuel-combustion", "run-1"), b"{}")
        await agent.subscribe(names.cancel_subject("fuel-combustion"))
        await agent.flush()
        assert refused == []
        await agent.publish(names.finished_subject("purchased-electricity", "run-2"), b"{}")
        await agent.subscribe(names.cancel_subject("purchased-electricity"))
        await agent.publish(names.task_subject("fuel-combustion", 2), b"{}")  # enqueueing is the gateway's
        await eventually(lambda: len(refused) >= 3, timeout=5, what="three permission violations")
    finally:
        await agent.close()
    assert all("permissions violation" in text.lower() for text in refused), refused
    assert any("af.control.cancel.purchased-electricity" in text for text in refused), refused
    assert any("af.events.execution.finished.purchased-electricity" in text for text in refused), refused


async def test_an_agents_worker_on_its_own_credentials_runs_retries_and_dead_letters_its_tasks(
    deployed: Deployed,
) -> None:
    agent = "fuel-combustion"
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    async def handler(ctx: TaskContext) -> Any:
        if ctx.input["litres"] < 0:
            raise RuntimeError("no such thing as negative fuel")
        return {"kg_co2e": ctx.input["litres"] * 2.68}

    platform_url = deployed.url("nats-0", "platform", PASSWORDS["AF_NATS_PLATFORM_PASSWORD"])
    agent_url = deployed.url(
        "nats-1", "agent-fuel-combustion", PASSWORDS["AF_NATS_AGENT_FUEL_COMBUSTION_PASSWORD"]
    )
    platform = await nats.connect(platform_url)
    worker_nc = await nats.connect(agent_url, error_cb=on_error)
    try:
        platform_js = platform.jetstream(timeout=10)
        await provision(platform_js, ProvisionConfig(replicas=3))
        worker = TaskWorker(
            worker_nc, worker_nc.jetstream(timeout=10),
            {agent: (AgentQueueConfig(agent, max_attempts=2, backoff_base_s=0.05), handler)}, idle_poll_s=0.2,
        )  # fmt: skip
        await worker.start()
        try:
            async with TaskQueue(platform, platform_js) as queue:
                queued = await queue.enqueue(TaskSpec(agent=agent, input={"litres": 10}))
                failing = await queue.enqueue(TaskSpec(agent=agent, input={"litres": -1}))

            async def finished(run_id: str) -> Any:
                assert not refused, refused  # the server names the subject it refused
                state = await get_run(platform_js, run_id)
                return state if state is not None and state.status.finished else None

            state = await eventually(lambda: finished(queued.run_id), timeout=15, what="the run's outcome")
            failed = await eventually(
                lambda: finished(failing.run_id), timeout=15, what="the failing run's outcome"
            )
        finally:
            await worker.stop(2)
        event = await platform_js.get_last_msg(
            names.STREAM_EVENTS, names.finished_subject(agent, queued.run_id)
        )
        [dead] = await dlq.list_dead_letters(platform_js, name=agent)
    finally:
        await worker_nc.close()
        await platform.close()
    assert state.status == RunStatus.SUCCEEDED, state
    assert state.result == {"kg_co2e": 26.8}
    assert event.data
    assert failed.status == RunStatus.FAILED and [e.attempt for e in failed.errors] == [1, 2], failed
    assert dead.entry.run_id == failing.run_id
    assert refused == []


@asynccontextmanager
async def platform_and_agent(
    deployed: Deployed, agent_node: str
) -> AsyncIterator[tuple[JetStreamContext, Client, list[str]]]:
    """The platform's JetStream (on nats-0, everything provisioned with 3 replicas) and
    fuel-combustion's own connection on ``agent_node``, with the permission violations
    the server told it of."""
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    platform = await nats.connect(deployed.url("nats-0", "platform", PASSWORDS["AF_NATS_PLATFORM_PASSWORD"]))
    agent_url = deployed.url(
        agent_node, "agent-fuel-combustion", PASSWORDS["AF_NATS_AGENT_FUEL_COMBUSTION_PASSWORD"]
    )
    agent_nc = await nats.connect(agent_url, error_cb=on_error)
    try:
        platform_js = platform.jetstream(timeout=10)
        await provision(platform_js, ProvisionConfig(replicas=3))
        yield platform_js, agent_nc, refused
    finally:
        await agent_nc.close()
        await platform.close()


async def test_an_agents_credentials_follow_its_own_breakers_and_claim_its_trials_only(
    deployed: Deployed,
) -> None:
    agent = "fuel-combustion"
    async with platform_and_agent(deployed, "nats-1") as (platform_js, agent_nc, refused):
        trial = BreakerState(agent=agent, state=BreakerStatus.HALF_OPEN, since=utcnow(), trials=1, epoch=1)
        await change_breaker(platform_js, trial, closed_breaker(agent), None, "test")
        agent_js = agent_nc.jetstream(timeout=10)
        follower = follow_breakers(agent_nc, agent_js, [agent, f"{agent}.1.0.0"], lambda scope, state: None)
        await follower.start()
        try:
            assert follower.values[agent].state == BreakerStatus.HALF_OPEN
            assert await claim_trial(agent_js, trial, "run-1")
            assert not await claim_trial(agent_js, trial, "run-2")  # the one trial is taken
        finally:
            await follower.stop()
        assert refused == []
        await agent_nc.subscribe("$KV.af_breakers.state.purchased-electricity")
        await eventually(lambda: refused, timeout=5, what="a permission violation")
        await change_breaker(
            platform_js, closed_breaker(agent).model_copy(update={"epoch": 2}), trial, None, "test"
        )
    assert "af_breakers.state.purchased-electricity" in refused[0], refused


async def test_an_agents_credentials_keep_concurrency_quotas_but_cannot_define_them(
    deployed: Deployed,
) -> None:
    agent = "fuel-combustion"
    async with platform_and_agent(deployed, "nats-2") as (platform_js, agent_nc, refused):
        await put_limit(platform_js, Quota(id="acme-running", tenant="acme", max_concurrent=1))
        quotas = ConcurrencyQuotas(agent_nc, agent_nc.jetstream(timeout=10), lambda scope: None)
        await quotas.start()
        try:
            assert quotas.applicable(agent, "acme") == [("tenant.acme", 1)]
            assert await quotas.claim("tenant.acme", 1, "run-1", "w", 30)
            assert not await quotas.claim("tenant.acme", 1, "run-2", "w", 30)  # the one slot is taken
            await eventually(lambda: quotas.full("tenant.acme"), 5, "the claim seen by the follower")
            await quotas.release("tenant.acme", "run-1")
            assert await quotas.claim("tenant.acme", 1, "run-2", "w", 30)
        finally:
            await quotas.stop()
        assert refused == []
        await agent_nc.publish("$KV.af_budgets.quota.acme-running", b"{}")  # raising its own limit
        await eventually(lambda: refused, timeout=5, what="a permission violation")
    assert "af_budgets.quota.acme-running" in refused[0], refused

"""A tenant's ``pinned_version`` and ``mode`` decide which workers run its tasks, on the
real server: workers of another version (or shared ones, for a tenant in dedicated
mode) hand its deliveries back unstarted, not as attempts; a change applies to the
next task; a task no worker may run is dead-lettered with the reason, not lost."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel

from agents.contract import Agent, RunContext
from agents.lifecycle.actions import Action, ActionFailed, Operator
from agents.lifecycle.manager import LifecycleManager
from agents.registry import Registry
from mesh.queue import worker as worker_module
from mesh.queue.agent_config import ConfigRecord, ConfigWatch, put_record, wants_dedicated
from mesh.queue.dlq import list_dead_letters
from mesh.queue.producer import TaskQueue, TaskSpec
from mesh.queue.worker import AgentQueueConfig, TaskContext, TaskWorker
from tests.helpers import eventually, finished_event, unique

_versions: dict[str, int] = {}


async def _configure(
    js: JetStreamContext, agent: str, config: dict[str, Any], tenant: str | None = None
) -> None:
    """Store the next version of ``agent``'s config (or ``tenant``'s override) in KV, as
    the gateway does after PostgreSQL."""
    key = f"{agent}/{tenant}"
    _versions[key] = _versions.get(key, 0) + 1
    record = ConfigRecord(agent=agent, tenant=tenant, version=_versions[key], config=config)
    assert await put_record(js, record) is not None


@asynccontextmanager
async def _workers(
    nc: Client, js: JetStreamContext, agent: str, *kinds: tuple[str, str]
) -> AsyncIterator[tuple[dict[str, str], list[ConfigWatch]]]:
    """Workers of ``agent``, one per (version, role); yields run id -> the version that ran it."""
    ran: dict[str, str] = {}
    workers, watches = [], []
    for version, role in kinds:

        async def handler(ctx: TaskContext, version: str = version) -> Any:
            ran[ctx.run_id] = version
            return {"by": version}

        cfg = AgentQueueConfig(agent, version=version, backoff_base_s=0.05, backoff_max_s=0.1)
        watch = ConfigWatch(nc, js, name=f"{version}-{role}")
        workers.append(TaskWorker(nc, js, {agent: (cfg, handler)}, idle_poll_s=0.1, name=f"{version}-{role}",
                                  role=role, config=watch, concurrency=4))  # fmt: skip
        watches.append(watch)
    for w in workers:
        await w.start()
    try:
        yield ran, watches
    finally:
        for w in workers:
            await w.stop(drain_timeout=5)


async def _seen_by(watches: list[ConfigWatch], agent: str, tenant: str, check: Callable[[Any], bool]) -> None:
    """Until every worker's watch sees the change (a write reaches them in milliseconds)."""

    async def seen() -> bool:
        return all(check(w.merged(agent, tenant)) for w in watches)

    await eventually(seen, 5, "the config change reached every worker")


async def _run_all(
    queue: TaskQueue, js: JetStreamContext, agent: str, tenant: str, n: int
) -> dict[str, dict[str, Any]]:
    """Enqueue ``n`` tasks of ``tenant``; each run's finished event, by run id."""
    runs = [await queue.enqueue(TaskSpec(agent, {"i": i}, tenant=tenant)) for i in range(n)]
    return {
        run.run_id: await eventually(lambda r=run: finished_event(js, agent, r.run_id), 30, "finished")
        for run in runs
    }


def _by(events: dict[str, dict[str, Any]], field: str) -> set[str]:
    """The values of ``field`` (``version``; ``worker``: the worker's name) over ``events``;
    every run succeeded at its first attempt (hand-backs are not attempts)."""
    assert all(e["status"] == "succeeded" and e["attempts"] == 1 for e in events.values()), events
    return {e[field].split("@")[0] for e in events.values()}


async def test_a_pinned_tenant_runs_only_on_its_version_and_a_new_pin_applies_to_the_next_task(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("pinned")
    async with _workers(nc, mesh_js, agent, ("1.0.0", "pool"), ("2.0.0", "pool")) as (ran, watches):
        await _configure(mesh_js, agent, {"pinned_version": "2.0.0"}, tenant="acme")
        await _seen_by(watches, agent, "acme", lambda m: m.pinned_version == "2.0.0")
        acme = await _run_all(queue, mesh_js, agent, "acme", 24)
        assert _by(acme, "version") == {"2.0.0"} and {ran[r] for r in acme} == {"2.0.0"}
        # unpinned: both versions take them
        assert _by(await _run_all(queue, mesh_js, agent, "globex", 24), "version") == {"1.0.0", "2.0.0"}

        await _configure(mesh_js, agent, {"pinned_version": "1.0.0"}, tenant="acme")  # moved, live
        await _seen_by(watches, agent, "acme", lambda m: m.pinned_version == "1.0.0")
        assert _by(await _run_all(queue, mesh_js, agent, "acme", 16), "version") == {"1.0.0"}

        await _configure(mesh_js, agent, {"pinned_version": "2.0.0"})  # the agent's own pin: every tenant
        await _seen_by(watches, agent, "globex", lambda m: m.pinned_version == "2.0.0")
        assert _by(await _run_all(queue, mesh_js, agent, "globex", 16), "version") == {"2.0.0"}
        # acme's override still wins over the agent's pin
        assert _by(await _run_all(queue, mesh_js, agent, "acme", 8), "version") == {"1.0.0"}


async def test_a_tenant_in_dedicated_mode_runs_only_on_the_agents_own_workers(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue
) -> None:
    agent = unique("moded")
    async with _workers(nc, mesh_js, agent, ("1.0.0", "pool"), ("1.0.0", "dedicated")) as (_, watches):
        await _configure(mesh_js, agent, {"mode": "dedicated"}, tenant="acme")
        await _seen_by(watches, agent, "acme", lambda m: m.mode == "dedicated")
        assert _by(await _run_all(queue, mesh_js, agent, "acme", 24), "worker") == {"1.0.0-dedicated"}
        # pool mode: whichever worker the gate admits
        others = await _run_all(queue, mesh_js, agent, "globex", 24)
        assert _by(others, "worker") == {"1.0.0-pool", "1.0.0-dedicated"}


async def test_a_task_no_worker_may_run_is_dead_lettered_with_the_reason_once_the_allowance_is_used(
    nc: Client, mesh_js: JetStreamContext, queue: TaskQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small allowance, so the test does not wait for 50 hand-backs; the consumer's
    # max_deliver follows it (AgentQueueConfig.max_deliveries).
    monkeypatch.setattr(worker_module, "HAND_BACK_ALLOWANCE", 4)
    agent = unique("unplaced")
    async with _workers(nc, mesh_js, agent, ("1.0.0", "pool")) as (ran, watches):
        await _configure(mesh_js, agent, {"pinned_version": "9.9.9"}, tenant="acme")
        await _seen_by(watches, agent, "acme", lambda m: m.pinned_version == "9.9.9")
        queued = await queue.enqueue(TaskSpec(agent, {"i": 0}, tenant="acme"))
        event = await eventually(lambda: finished_event(mesh_js, agent, queued.run_id), 30, "dead-lettered")
        assert event["status"] == "failed" and "pinned to version 9.9.9" in event["error"], event
        letters = [d for d in await list_dead_letters(mesh_js, name=agent) if d.entry.run_id == queued.run_id]
        assert len(letters) == 1 and letters[0].entry.reason == "unplaced: pinned to version 9.9.9"
        assert ran == {}  # never started
        # unpinned, the dead letter is replayable: nothing was lost
        assert letters[0].entry.payload and letters[0].entry.tenant == "acme"


async def test_a_deploy_is_dedicated_when_the_config_or_a_tenants_override_says_so(
    nc: Client, mesh_js: JetStreamContext
) -> None:
    agent = unique("wants")
    assert not await wants_dedicated(mesh_js, agent)
    await _configure(mesh_js, agent, {"mode": "pool"})
    await _configure(mesh_js, agent, {"max_daily": 5}, tenant="globex")
    assert not await wants_dedicated(mesh_js, agent)
    await _configure(mesh_js, agent + "x", {"mode": "dedicated"})  # another agent whose name starts so
    assert not await wants_dedicated(mesh_js, agent)
    await _configure(mesh_js, agent, {"mode": "dedicated"}, tenant="acme")
    assert await wants_dedicated(mesh_js, agent)


class _In(BaseModel):
    x: int


class _Echo(Agent[_In, _In]):
    version = "1.0.0"
    Input, Output = _In, _In

    async def run(self, input: _In, ctx: RunContext) -> _In:
        return input


async def test_an_operator_without_dedicated_workers_refuses_a_deploy_the_config_makes_dedicated(
    nc: Client, mesh_js: JetStreamContext, pool: asyncpg.Pool
) -> None:
    echo = type("Echo", (_Echo,), {"key": unique("deployed")})()
    operator = Operator(LifecycleManager(pool, mesh_js, holder="ops"), nc, mesh_js, Registry([echo]))
    await operator.check(echo.key, Action.DEPLOY)  # pool mode: this gateway can deploy it
    await _configure(mesh_js, echo.key, {"mode": "dedicated"}, tenant="acme")
    with pytest.raises(ActionFailed, match="cannot start dedicated workers"):
        await operator.check(echo.key, Action.DEPLOY)

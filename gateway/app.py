"""The gateway's application, assembled in one place: `up`, the tests and the benchmarks run it.

:class:`Gateway` starts its parts in order — PostgreSQL (migrated) and NATS
(provisioned) unless given, the agents registry upserted, the task queue,
the execution recorder and the run index, the queue maintenance, the
scheduler, a worker in this process if asked, the API — and stops them in
reverse: each step bounded, all of them by one deadline, and once forced
the steps left are abandoned, never waited for (:class:`Shutdown`). What
`up` adds around it (embedded servers, worker processes, the data dir) is
:mod:`gateway.up`'s.

    async with Gateway(settings, registry).running(nats_url, database_url, token=token) as gateway:
        ...  # the API serves at gateway.api_url
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from aiohttp import web
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.configs import reconcile_forever
from agents.hub import Hub
from agents.hub.install import PACKAGES_DIR, Installer, know_installed
from agents.lifecycle.actions import Operator
from agents.lifecycle.dedicated import DedicatedWorkers
from agents.lifecycle.manager import LifecycleManager
from agents.recorder import BILLING, RUN_INDEX, Recorder
from agents.registry import Registry
from agents.runtime import worker_for
from agents.store.executions import upsert_agents
from agents.store.migrations import apply_migrations
from agents.store.partitions import ensure_partitions, keep_partitions
from agents.store.tenancy import ALL_TENANTS, app_pool, tenant_scope
from agents.store.tokens import register_token
from gateway.api import Services, create_app, operation_kinds
from gateway.api.hub import load_trust_policies
from gateway.api.middleware import log_access_to_stderr
from gateway.api.problems import ApiRunner
from gateway.operations import OperationKind, OperationRunner
from gateway.settings import Settings
from mesh.embedded import find_free_port
from mesh.provision import ProvisionConfig, provision
from mesh.queue.breakers import BreakerState, follow_breakers
from mesh.queue.maintenance import QueueMaintenance
from mesh.queue.producer import TaskQueue
from mesh.queue.worker import TaskWorker
from mesh.schedules.scheduler import Scheduler
from mesh.stopping import cancel_within
from mesh.wire.connection import connect, jetstream
from mesh.wire.follow import KeyFollower

__all__ = ["STEP_TIMEOUT_S", "Gateway", "InProcessWorker", "Parts", "Shutdown", "StopStep"]

log = logging.getLogger(__name__)

STEP_TIMEOUT_S = 10.0  # each part's stop; a worker's drain gets its drain timeout on top
OUTBOX_EVERY_S = 5.0  # how often transitions NATS did not confirm are published again


async def _publish_lifecycle(manager: LifecycleManager) -> None:
    """The lifecycle's outbox: at start (a gateway killed between a transition's
    commit and its event), then every few seconds."""
    while True:
        try:
            await manager.publish_pending()
        except Exception as exc:  # the database or NATS away: next time
            log.warning("lifecycle outbox: %s", exc)
        await asyncio.sleep(OUTBOX_EVERY_S)


async def _cancel(task: asyncio.Task[None]) -> None:
    """End a loop whose cancel its NATS or database call may swallow (mesh.stopping)."""
    await cancel_within([task], asyncio.get_running_loop().time() + STEP_TIMEOUT_S)


StopStep = tuple[str, Callable[[], Awaitable[object]], float]
"""A stop step: what stops (in the operator's words), how, and for at most how many seconds."""


@dataclass(frozen=True)
class InProcessWorker:
    """A worker pool in the gateway's own process (tests, benchmarks); `up` runs its pools as processes."""

    agents: list[str] | None = None  # None: every agent of the registry
    concurrency: int = 16
    idle_poll_s: float = 1.0
    drain_timeout_s: float = 5.0


@dataclass(frozen=True)
class Parts:
    """Which parts run in the gateway's process; `up` runs them all but a worker."""

    recorder: bool = True  # execution events -> PostgreSQL
    run_index: bool = True  # run states -> PostgreSQL
    billing: bool = True  # billing records (the metering processor's) -> PostgreSQL
    maintenance: bool = True
    scheduler: bool = True
    serve: bool = True  # the API on settings.host:port; False: the caller serves ``gateway.app``
    worker: InProcessWorker | None = None
    poll_s: float = 1.0  # how long the recorders' idle pulls wait
    dedicated: bool = True  # start agents' dedicated worker processes (agents.lifecycle.dedicated)


@dataclass
class Shutdown:
    """One orderly stop: steps run in order, each for at most its limit and
    all by one deadline. A step that overruns is abandoned (and said so), one
    that fails is said and passed; once ``forced``, every step left is
    abandoned at once."""

    say: Callable[[str], None]
    forced: asyncio.Event = field(default_factory=asyncio.Event)
    abandoned: list[str] = field(default_factory=list)  # the steps given up on

    async def run(self, steps: Iterable[StopStep], within: float) -> None:
        """Run ``steps`` in order, all within ``within`` s from now."""
        clock = asyncio.get_running_loop().time
        deadline = clock() + within
        for what, step, limit in steps:
            await self.step(what, step, min(limit, deadline - clock()))

    async def step(self, what: str, step: Callable[[], Awaitable[object]], timeout: float) -> None:
        """Run one stop step for at most ``timeout`` s, or until forced; else abandon it.

        ``asyncio.wait``, not a timeout around ``await``: a step that loses a
        cancel could not be interrupted that way, and would hang us with it.
        """
        if self.forced.is_set() or timeout <= 0:
            self.abandoned.append(what)
            return
        task = asyncio.ensure_future(step())
        forced = asyncio.ensure_future(self.forced.wait())
        await asyncio.wait({task, forced}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if task.done():
            if not task.cancelled() and task.exception() is not None:
                self.say(f"{what} failed to stop: {task.exception()!r}; going on")
            return
        task.cancel()
        self.abandoned.append(what)
        if not self.forced.is_set():
            self.say(f"{what} did not stop in {timeout:.0f} s; abandoning it")


@dataclass
class Gateway:
    """The gateway's parts in this process, started in order and stopped in reverse.

    ``async with gateway.running(...)``, or ``start()`` and then
    ``stop_steps()`` folded into a larger stop (`up` drains its worker
    processes first).
    """

    settings: Settings
    registry: Registry
    parts: Parts = field(default_factory=Parts)
    say: Callable[[str], None] = log.info  # what it does, for the operator (`up` prints it)
    # Each part as it starts (None: not started, or not run here), so a failed start stops what ran.
    nc: Client | None = None
    js: JetStreamContext | None = None
    pool: asyncpg.Pool | None = None
    queue: TaskQueue | None = None
    services: Services | None = None
    recorder: Recorder | None = None
    run_index: Recorder | None = None
    billing: Recorder | None = None
    maintenance: QueueMaintenance | None = None
    scheduler: Scheduler | None = None
    worker: TaskWorker | None = None
    app: web.Application | None = None
    runner: web.AppRunner | None = None
    outbox: asyncio.Task[None] | None = None  # re-sends lifecycle transitions NATS did not confirm
    resumed: asyncio.Task[None] | None = None  # starts again the dedicated workers of live versions
    partitions: asyncio.Task[None] | None = None  # makes the months of executions ahead
    config_reconcile: asyncio.Task[None] | None = None  # puts config versions KV lacks (agents.configs)
    breakers: KeyFollower[BreakerState] | None = None  # circuit breakers, for callers waiting on a run
    dedicated: DedicatedWorkers | None = None  # the worker processes of agents in dedicated mode
    operations: OperationRunner | None = None  # the long operations (202) this gateway runs
    kinds: list[OperationKind] = field(default_factory=list)  # operation kinds beyond the API's own
    api_url: str = ""  # where it serves the API (parts.serve)
    _opened: list[StopStep] = field(default_factory=list)  # closing the connections opened here

    @asynccontextmanager
    async def running(
        self, nats: str | Client, database: str | asyncpg.Pool, *, token: str | None
    ) -> AsyncIterator[Gateway]:
        """:meth:`start`, then :meth:`stop` however the block ends (a failed start too)."""
        try:
            await self.start(nats, database, token=token)
            yield self
        finally:
            await self.stop()

    async def start(self, nats: str | Client, database: str | asyncpg.Pool, *, token: str | None) -> None:
        """Start every part. ``nats``, ``database``: a URL is connected to here
        (the server provisioned, the database migrated) and closed on stop; a
        connection or pool given is the caller's, ready, and left open.
        ``token``: the API's bearer token (None: no auth, embedded dev mode only)."""
        s, parts = self.settings, self.parts
        self.pool = await self._database(database)
        nc, js = await self._nats(nats)
        self.nc, self.js = nc, js
        await upsert_agents(self.pool, self.registry)
        self.queue = TaskQueue(nc, js, max_payload=s.max_payload_bytes)
        await self.queue.start()
        served = self._served_agents()
        holder = f"gateway@{socket.gethostname()}/{os.getpid()}"
        manager = LifecycleManager(self.pool, js, holder=holder)
        installer = Installer(Hub(self.pool, nc, js), s.data_dir.resolve() / PACKAGES_DIR,
                              load_trust_policies(s.trust_policy_file))  # fmt: skip
        operator = Operator(manager, nc, js, self.registry, installer=installer)
        if parts.dedicated:
            operator.dedicated = self.dedicated = DedicatedWorkers(
                self._dedicated_command, operator.crashed, env=self._dedicated_env(nats, nc)
            )
        # Its own name per start: the operations a killed process ran are taken over,
        # even by a new process with the same host name and pid (a container's pid 1).
        self.operations = OperationRunner(
            self.pool, f"{holder}/{secrets.token_hex(3)}", heartbeat_s=s.operation_heartbeat_s,
            stale_s=s.operation_stale_s, keep_s=s.operation_keep_days * 86400,
        )  # fmt: skip
        self.services = Services(nc, js, self.pool, self.registry, s, self.queue, operator, self.operations,
                                 lambda: served)  # fmt: skip
        self.operations.register(*operation_kinds(self.services), *self.kinds)
        self.breakers = self.services.breakers = follow_breakers(nc, js, None, lambda agent, state: None)
        await self.breakers.start()
        self.outbox = asyncio.create_task(_publish_lifecycle(manager), name="lifecycle-outbox")
        if parts.maintenance:
            await ensure_partitions(self.pool)  # before the recorders write: this month exists
            self.partitions = asyncio.create_task(keep_partitions(self.pool), name="executions-partitions")
        self.config_reconcile = asyncio.create_task(reconcile_forever(self.pool, js), name="config-reconcile")
        if parts.recorder:
            self.recorder = Recorder(nc, js, self.pool, poll_s=parts.poll_s)
            await self.recorder.start()
        if parts.run_index:
            self.run_index = Recorder(nc, js, self.pool, poll_s=parts.poll_s, projection=RUN_INDEX)
            await self.run_index.start()
        if parts.billing:
            self.billing = Recorder(nc, js, self.pool, poll_s=parts.poll_s, projection=BILLING)
            await self.billing.start()
        if parts.maintenance:
            self.maintenance = QueueMaintenance(nc, js)
            await self.maintenance.start()
        if parts.scheduler:
            self.scheduler = Scheduler(nc, js, self.queue)
            await self.scheduler.start()
        if parts.worker is not None:
            worker = parts.worker
            self.worker = worker_for(nc, js, self.registry, worker.agents, worker.concurrency,
                                     idle_poll_s=worker.idle_poll_s)  # fmt: skip
            await self.worker.start()
        await know_installed(self.pool, self.registry)  # after the worker: it runs none of them
        if token is not None:
            async with tenant_scope(self.pool, ALL_TENANTS) as conn:
                await register_token(conn, "settings", token, "the configured token (AF_API_TOKEN or up's)")
        await self.operations.start()  # resumes or fails what stopped gateways left
        if self.dedicated is not None:  # in the background: each waits until its workers answer
            self.resumed = asyncio.create_task(operator.resume_dedicated(), name="dedicated-resume")
        self.app = create_app(self.services, auth=token is not None)
        if parts.serve:
            await self._serve(self.app)

    async def _database(self, database: str | asyncpg.Pool) -> asyncpg.Pool:
        """The pool the platform works with: as the application's role (which row
        security binds), after the migrations ran as ``database``'s own user."""
        if not isinstance(database, str):
            return database
        owner = await asyncpg.connect(database)
        try:
            applied = await apply_migrations(owner)
        finally:
            await owner.close()
        if applied:
            self.say(f"applied migrations {applied}")
        s = self.settings
        password = s.database_app_password.get_secret_value() if s.database_app_password else None
        pool = await app_pool(
            database, role=s.database_app_role, password=password, size=s.database_pool_size
        )
        self._opened.append(("the database pool", pool.close, STEP_TIMEOUT_S))
        return pool

    async def _nats(self, nats: str | Client) -> tuple[Client, JetStreamContext]:
        if not isinstance(nats, str):
            return nats, await jetstream(nats)
        nc = await connect(nats, name="agent-factory-up")
        self._opened.append(("the NATS connection", nc.drain, STEP_TIMEOUT_S))
        js = await jetstream(nc)
        await provision(js, ProvisionConfig(replicas=self.settings.stream_replicas))
        return nc, js

    def _dedicated_command(self, unit: str, index: int, package_dir: Path | None) -> list[str]:
        """A dedicated worker of ``unit`` (an agent, or ``agent@version`` of an installed
        package, whose code it loads from ``package_dir`` alone)."""
        s = self.settings
        agent, _, version = unit.partition("@")
        # -P: nothing from the package's directory (its cwd) shadows the platform's own
        # modules; the worker puts that directory on the path for the agent's import only.
        argv = [
            sys.executable, *(["-P"] if package_dir else []), "-m", "gateway.cli", "worker", "--name",
            f"dedicated-{agent}-{version}-{index}" if version else f"dedicated-{agent}-{index}",
            "--agents", agent, "--role", "dedicated", "--concurrency", str(s.worker_concurrency),
            "--drain-timeout", str(s.drain_timeout_s),
        ]  # fmt: skip
        return [*argv, "--package-dir", str(package_dir)] if package_dir is not None else argv

    def _dedicated_env(self, nats: str | Client, nc: Client) -> dict[str, str]:
        """What a dedicated worker needs: where NATS is (the URL given, or the one
        connected to), the agents this gateway loads, the data dir (metrics)."""
        at = nc.connected_url
        url = nats if isinstance(nats, str) else f"{at.scheme}://{at.netloc}" if at else ""
        return {**os.environ, "AF_NATS_URL": url, "AF_AGENTS": self.settings.agents,
                "AF_DATA_DIR": str(self.settings.data_dir.resolve())}  # fmt: skip

    def _served_agents(self) -> set[str]:
        """The agents a worker serves: this process's worker's, or every one when
        `up` runs worker pools (``settings.workers``; each serves them all)."""
        if self.parts.worker is not None:
            return set(self.parts.worker.agents or self.registry.keys())
        return set(self.registry.keys()) if self.settings.workers else set()

    async def _serve(self, app: web.Application) -> None:
        s = self.settings
        log_access_to_stderr(s.access_log)  # ours (gateway.api.middleware), not aiohttp's
        self.runner = ApiRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
        await self.runner.setup()
        port = s.port or find_free_port()
        await web.TCPSite(self.runner, s.host, port).start()
        self.api_url = f"http://{s.host}:{port}"

    def stop_steps(self) -> list[StopStep]:
        """How to stop what started, in order: the API first, then what feeds
        the queue or reads it, the queue, and the connections opened here last."""
        steps: list[StopStep] = []
        if self.runner is not None:
            steps.append(("the API", self.runner.cleanup, STEP_TIMEOUT_S))
        if self.operations is not None:
            steps.append(("the operations", self.operations.stop, STEP_TIMEOUT_S))
        if self.worker is not None:
            drain = (self.parts.worker or InProcessWorker()).drain_timeout_s
            steps.append(("the worker", functools.partial(self.worker.stop, drain), drain + STEP_TIMEOUT_S))
        if self.scheduler is not None:
            steps.append(("the scheduler", self.scheduler.stop, STEP_TIMEOUT_S))
        if self.maintenance is not None:
            steps.append(("the queue maintenance", self.maintenance.stop, STEP_TIMEOUT_S))
        if self.recorder is not None:
            steps.append(("the recorder", self.recorder.stop, STEP_TIMEOUT_S))
        if self.run_index is not None:
            steps.append(("the run index", self.run_index.stop, STEP_TIMEOUT_S))
        if self.billing is not None:
            steps.append(("the billing recorder", self.billing.stop, STEP_TIMEOUT_S))
        if self.resumed is not None:  # before the processes it may be starting are stopped
            steps.append(("the dedicated resume", functools.partial(_cancel, self.resumed), STEP_TIMEOUT_S))
        if self.dedicated is not None:
            drain = self.settings.drain_timeout_s
            steps.append(("the dedicated workers", self.dedicated.close, drain + STEP_TIMEOUT_S))
        if self.outbox is not None:
            steps.append(("the lifecycle outbox", functools.partial(_cancel, self.outbox), STEP_TIMEOUT_S))
        if self.partitions is not None:
            steps.append(
                ("the partition keeper", functools.partial(_cancel, self.partitions), STEP_TIMEOUT_S)
            )
        if self.config_reconcile is not None:
            steps.append(("the config reconcile", functools.partial(_cancel, self.config_reconcile),
                          STEP_TIMEOUT_S))  # fmt: skip
        if self.breakers is not None:
            steps.append(("the breaker follower", self.breakers.stop, STEP_TIMEOUT_S))
        if self.queue is not None:
            steps.append(("the task queue", self.queue.stop, STEP_TIMEOUT_S))
        steps.extend(reversed(self._opened))  # NATS, then the database
        return steps

    async def stop(self, timeout: float | None = None) -> list[str]:
        """Stop every part (:meth:`stop_steps`), all within ``timeout`` s
        (default ``drain_timeout_s + 20``, as `up`); returns the steps abandoned."""
        shutdown = Shutdown(self.say)
        await shutdown.run(self.stop_steps(), timeout or self.settings.drain_timeout_s + 20)
        return shutdown.abandoned

"""``agent-factory up``: the whole system in one process tree.

Embedded mode (no ``AF_NATS_URL`` / ``AF_DATABASE_URL``) starts nats-server
and PostgreSQL as children with their data under the data dir, so a second
``up`` finds everything where it was. Then: migrations, streams and
buckets, the agents registry, the execution recorder, the API and the
worker pools (child processes, restarted if they die). SIGINT/SIGTERM
drains the workers first, then stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import click
from aiohttp import web

from agents.recorder import Recorder
from agents.registry import example_registry
from agents.store.embedded import EmbeddedPostgres
from agents.store.executions import upsert_agents
from agents.store.migrations import apply_migrations
from gateway.api import Services, create_app
from gateway.state import UpState, read_state, write_state
from mesh.connection import connect, jetstream
from mesh.embedded import NatsServer, find_free_port
from mesh.maintenance import QueueMaintenance
from mesh.provision import ProvisionConfig, provision
from mesh.queue import TaskQueue
from mesh.scheduler import Scheduler
from mesh.settings import Settings

__all__ = ["Platform", "run_up"]

log = logging.getLogger(__name__)


def _port_or_free(preferred: int | None) -> int:
    if preferred:
        import socket

        with socket.socket() as s:
            # Servers bind with SO_REUSEADDR, so a port in TIME_WAIT is free for them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    return find_free_port()


@dataclass
class Platform:
    """Everything `up` started, so it can be stopped in reverse order."""

    settings: Settings
    say: bool = True
    nats: NatsServer | None = None
    postgres: EmbeddedPostgres | None = None
    services: Services | None = None
    recorder: Recorder | None = None
    maintenance: QueueMaintenance | None = None
    scheduler: Scheduler | None = None
    runner: web.AppRunner | None = None
    workers: list[asyncio.subprocess.Process] = field(default_factory=list)
    state: UpState = field(default_factory=UpState)
    api_url: str = ""
    _supervisor: asyncio.Task[None] | None = None
    _stopping: bool = False

    def _say(self, text: str) -> None:
        if self.say:
            click.echo(text, err=True)

    async def start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = read_state(s.data_dir)
        nats_url, db_url = s.nats_url, s.database_url
        if nats_url is None:
            self._say("starting embedded nats-server …")
            self.nats = NatsServer(
                s.data_dir / "nats",
                port=_port_or_free(self.state.nats_port),
                sync_interval=s.nats_sync_interval,
            )
            await asyncio.to_thread(self.nats.start)
            nats_url = self.nats.url
        if db_url is None:
            self._say("starting embedded PostgreSQL …")
            pg_port = _port_or_free(self.state.postgres_port)
            self.postgres = EmbeddedPostgres(s.data_dir / "postgres", port=pg_port)
            await asyncio.to_thread(self.postgres.start)
            db_url = self.postgres.url
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)
        if applied:
            self._say(f"applied migrations {applied}")
        nc = await connect(nats_url, name="agent-factory-up")
        js = await jetstream(nc)
        await provision(js, ProvisionConfig(replicas=s.stream_replicas))
        registry = example_registry()
        await upsert_agents(pool, registry)
        queue = TaskQueue(nc, js, max_payload=s.max_payload_bytes)
        await queue.start()
        served = set(registry.keys()) if s.workers else set()
        self.services = Services(nc, js, pool, registry, s, queue, served_agents=lambda: served)
        self.recorder = Recorder(nc, js, pool)
        await self.recorder.start()
        self.maintenance = QueueMaintenance(nc, js)
        await self.maintenance.start()
        self.scheduler = Scheduler(nc, js, queue)
        await self.scheduler.start()
        token = s.api_token or self.state.token or secrets.token_urlsafe(32)
        app = create_app(self.services, token if s.auth_enabled else None)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        port = s.port or find_free_port()
        site = web.TCPSite(self.runner, s.host, port)
        await site.start()
        self.api_url = f"http://{s.host}:{port}"
        self.state = write_state(
            s.data_dir, self.state, api_url=self.api_url, nats_url=nats_url, database_url=db_url,
            token=token, pid=os.getpid(), nats_port=self.nats.port if self.nats else None,
            postgres_port=self.postgres.port if self.postgres else None,
        )  # fmt: skip
        for i in range(s.workers):
            self.workers.append(await self._spawn_worker(i, nats_url))
        self._supervisor = asyncio.create_task(self._supervise(nats_url))

    async def _spawn_worker(self, index: int, nats_url: str) -> asyncio.subprocess.Process:
        env = {**os.environ, "AF_NATS_URL": nats_url}
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "worker", "--name", f"worker-{index}",
            "--concurrency", str(self.settings.worker_concurrency),
            "--drain-timeout", str(self.settings.drain_timeout_s),
            env=env, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def _supervise(self, nats_url: str) -> None:
        """Restart a worker pool that died (with a pause, so a crash loop is not a storm)."""
        while not self._stopping:
            waits = {asyncio.ensure_future(p.wait()): i for i, p in enumerate(self.workers)}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for f in pending:
                f.cancel()
            if self._stopping:
                return
            for f in done:
                i = waits[f]
                self._say(f"worker-{i} exited with code {f.result()}; restarting in 1 s")
                await asyncio.sleep(1)
                self.workers[i] = await self._spawn_worker(i, nats_url)

    def banner(self) -> str:
        st = self.state
        return "\n".join([
            "",
            "Agent Factory is up.",
            f"  API        {self.api_url}   (token in {self.settings.data_dir / 'state.json'})",
            f"  NATS       {st.nats_url}",
            f"  PostgreSQL {st.database_url}",
            f"  workers    {len(self.workers)} pool(s), agents: "
            + ", ".join(self.services.registry.keys() if self.services else []),
            "",
            "Try, in another terminal:",
            "  .venv/bin/agent-factory run fuel-combustion "
            "--input '{\"fuel\": \"diesel\", \"quantity\": 100, \"unit\": \"L\"}' --wait",
            "  .venv/bin/agent-factory status",
            "",
            "Ctrl-C drains in-flight work and stops everything.",
        ])  # fmt: skip

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self._say("draining workers …")
        for proc in self.workers:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.workers:
            try:
                await asyncio.wait_for(proc.wait(), self.settings.drain_timeout_s + 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.maintenance is not None:
            await self.maintenance.stop()
        if self.recorder is not None:
            await self.recorder.stop()
        if self.services is not None:
            await self.services.queue.stop()
            await self.services.nc.drain()
            await self.services.pool.close()
        if self.postgres is not None:
            await asyncio.to_thread(self.postgres.stop)
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
        write_state(self.settings.data_dir, self.state, pid=None)
        self._say("stopped.")


async def run_up(settings: Settings) -> None:
    platform = Platform(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await platform.start()
        click.echo(platform.banner(), err=True)
        await stop.wait()
    finally:
        await platform.stop()


def data_dir_default() -> Path:
    return Path(os.environ.get("AF_DATA_DIR", ".agent-factory"))

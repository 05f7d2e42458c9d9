"""``agent-factory up``: the whole system in one process tree.

Embedded mode (no ``AF_NATS_URL`` / ``AF_DATABASE_URL``) starts nats-server
and PostgreSQL as children with their data under the data dir, so a second
``up`` finds everything where it was. Then: migrations, streams and
buckets, the agents registry, the recorders, the queue maintenance, the
scheduler and the API (the gateway, :mod:`gateway.app`), then the worker
pools (child processes, restarted if they die).

One ``up`` per data dir: ``up.lock`` (an flock the OS releases if we die)
holds its pid, and a second ``up`` is refused. Servers an ``up`` killed -9
left running are stopped at the next start; the children die with ``up``
anyway (``PR_SET_PDEATHSIG``).

SIGINT/SIGTERM drains the workers first, then stops everything in reverse
order, each step bounded and the whole within ``stop_timeout_s``: a step
that overruns is abandoned (and said so). A second signal forces the stop:
what is left is abandoned, and the workers and servers are killed. The
servers are stopped whatever failed before; after an abandoned step the
process exits at once rather than wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import shlex
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import click

from agents.registry import load_registry
from agents.store.embedded import EmbeddedPostgres
from gateway.app import STEP_TIMEOUT_S, Gateway, Shutdown, StopStep
from gateway.children import Children
from gateway.ports import PortInUse, bindable, check_port
from gateway.settings import Settings
from gateway.state import UpState, read_state, write_state
from gateway.telemetry import LogStream, configure_logging, tracing
from mesh import names
from mesh.cluster import NatsCluster
from mesh.embedded import NatsServer, find_free_port
from mesh.queue import metrics
from mesh.wire.connection import redacted

__all__ = ["DataDirInUse", "Platform", "lock_data_dir", "run_up"]

log = logging.getLogger(__name__)

SERVERS_STOP_S = 10.0  # nats-server and PostgreSQL, after the rest; 2 s once forced


class DataDirInUse(Exception):
    """Another ``up`` runs on this data dir."""


def lock_data_dir(data_dir: Path) -> int:
    """Hold ``<data dir>/up.lock`` with our pid in it; returns its fd (close it
    to let go). An flock: the OS releases it when we exit, however we exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        msg = f"{data_dir} is in use by another `agent-factory up` (pid {holder}); stop it first"
        raise DataDirInUse(msg) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _port_or_free(preferred: int | None, api_port: int) -> int:
    """An embedded server's port: the one it had, unless taken (by the API too)."""
    if preferred and preferred != api_port and bindable("127.0.0.1", preferred):
        return preferred
    return find_free_port()


@dataclass
class Platform:
    """Everything `up` started — the servers, the gateway, the worker pools —
    so it can be stopped in reverse order."""

    settings: Settings
    say: bool = True
    stop_timeout_s: float | None = None  # the steps before the servers; None: drain_timeout_s + 20
    nats: NatsServer | None = None
    cluster: NatsCluster | None = None  # instead of ``nats`` with ``up --cluster N``
    postgres: EmbeddedPostgres | None = None
    gateway: Gateway | None = None
    children: Children | None = None  # the worker pools and the stream processors, restarted if they die
    package_dir: Path | None = None  # the workers serve this package's agent alone (``agent test --stack``)
    child_env: dict[str, str] = field(default_factory=dict)  # added to the children's environment
    state: UpState = field(default_factory=UpState)
    forced: asyncio.Event = field(default_factory=asyncio.Event)  # see force()
    abandoned: list[str] = field(default_factory=list)  # stop steps given up on
    _lock: int | None = None
    _nats_url: str = ""  # what the workers connect to: the server's URL, or every node's
    _supervisor: asyncio.Task[None] | None = None
    _logs: LogStream | None = None  # this process's records into AF_LOGS

    def _say(self, text: str) -> None:
        if self.say:
            click.echo(text, err=True)

    @property
    def clean(self) -> bool:
        """Stopped in order, nothing forced or abandoned."""
        return not self.forced.is_set() and not self.abandoned

    async def start(self) -> None:
        s = self.settings
        self._lock = lock_data_dir(s.data_dir)
        self.state = read_state(s.data_dir)
        self._refuse_a_busy_api_port()
        nats_url, db_url = s.nats_url, s.database_url
        # The servers are launched from this (the main) thread, as die_with_parent
        # follows the thread that starts them; only the waiting runs in threads.
        if nats_url is None and s.nats_cluster_size > 1:
            nats_url = await self._start_cluster()
            s = self.settings  # with the cluster's stream replicas
        elif nats_url is None:
            self._say("starting embedded nats-server …")
            # Credentials of its own on every start (in state.json, mode 0600): the
            # embedded server is not open to whoever else runs on this host.
            self.nats = NatsServer(
                s.data_dir / "nats", sync_interval=s.nats_sync_interval, die_with_parent=True,
                credentials=("agent-factory", secrets.token_urlsafe(24)),
            )  # fmt: skip
            self._reclaimed("nats-server", await asyncio.to_thread(self.nats.reclaim))
            self.nats.port = _port_or_free(self.state.nats_port, s.port)
            self.nats.launch()
            await asyncio.to_thread(self.nats.wait_ready)
            nats_url = self.nats.url
        self._nats_url = nats_url
        if db_url is None:
            self._say("starting embedded PostgreSQL …")
            self.postgres = EmbeddedPostgres(s.data_dir / "postgres", die_with_parent=True)
            self._reclaimed("PostgreSQL", await asyncio.to_thread(self.postgres.reclaim))
            self.postgres.port = _port_or_free(self.state.postgres_port, s.port)
            await asyncio.to_thread(self.postgres.prepare)
            self.postgres.launch()
            await asyncio.to_thread(self.postgres.wait_ready)
            db_url = self.postgres.url
        token = s.api_token or self.state.token or secrets.token_urlsafe(32)
        self.gateway = Gateway(s, load_registry(s.agents), say=self._say)
        await self.gateway.start(nats_url, db_url, token=token if s.auth_enabled else None)
        if s.log_stream and self.gateway.nc is not None:
            self._logs = LogStream("gateway", s.log_buffer)
            await self._logs.start(self.gateway.nc)
            self._logs.attach()  # the access log too
        self.state = write_state(
            s.data_dir, self.state, api_url=self.gateway.api_url, nats_url=nats_url, database_url=db_url,
            token=token, pid=os.getpid(), nats_port=self.nats.port if self.nats else None,
            postgres_port=self.postgres.port if self.postgres else None,
            nats_urls=self.cluster.urls if self.cluster else None,
        )  # fmt: skip
        self.children = Children(self._say)
        self._add_children()
        await self.children.start()
        if self.children.children:
            self._supervisor = asyncio.create_task(self.children.supervise())

    async def _start_cluster(self) -> str:
        """``up --cluster N``: N nodes under ``<data dir>/nats-cluster/n<i>``, the
        streams with N replicas; returns every node's URL, comma-separated.

        Every client (the gateway, each worker pool) gets the whole list:
        nats-py picks a node at random (so the clients spread over the nodes
        and the work crosses the routes), and one that starts or restarts
        while a node is down connects to another (``connect`` presents the
        credentials to each).
        """
        s = self.settings
        size = s.nats_cluster_size
        self._say(f"starting an embedded JetStream cluster of {size} nats-servers …")
        self.cluster = NatsCluster(
            s.data_dir / "nats-cluster", size=size, sync_interval=s.nats_sync_interval, die_with_parent=True,
            credentials=("agent-factory", secrets.token_urlsafe(24)),
        )  # fmt: skip
        for pid in await asyncio.to_thread(self.cluster.reclaim):
            self._reclaimed("nats-server", pid)
        self.cluster.launch()
        await asyncio.to_thread(self.cluster.wait_ready)
        if s.stream_replicas == 1:
            self.settings = s.model_copy(update={"stream_replicas": size})
        return ",".join(self.cluster.urls)

    def _refuse_a_busy_api_port(self) -> None:
        """Before anything starts: a taken API port is one line now, not an
        error once the servers are up. (The servers' ports are not fixed:
        each takes a free one if its own is taken.)"""
        assert self._lock is not None
        servers = {port for port in (self.state.nats_port, self.state.postgres_port) if port}
        try:
            check_port(self.settings.host, self.settings.port, what="API", flag="--port", avoid=servers)
        except PortInUse:
            os.close(self._lock)  # refused: let the data dir go, as if we never came
            self._lock = None
            raise

    def _reclaimed(self, server: str, pid: int | None) -> None:
        if pid is not None:
            self._say(f"stopped {server} (pid {pid}) that an earlier `up` left running on this data dir")

    def _add_children(self) -> None:
        """The worker pools and one process per stream processor (``AF_PROCESSORS``)."""
        assert self.children is not None
        s = self.settings
        # The data dir too: a pool names its metrics port there for the gateway's /metrics.
        env = {**os.environ, "AF_NATS_URL": self._nats_url, "AF_AGENTS": s.agents,
               "AF_DATA_DIR": str(s.data_dir.resolve()),
               "AF_STREAM_REPLICAS": str(s.stream_replicas), **self.child_env}  # fmt: skip
        cli = [sys.executable, "-m", "gateway.cli"]
        served = ["--package-dir", str(self.package_dir)] if self.package_dir is not None else []
        for i in range(s.workers):
            self.children.add(f"worker-{i}", [*cli, "worker", "--name", f"worker-{i}", *served,
                                              "--concurrency", str(s.worker_concurrency),
                                              "--drain-timeout", str(s.drain_timeout_s)], env)  # fmt: skip
        for name in s.processor_names:
            # Faust's progress tables are for a processor run by hand; up's output stays readable.
            argv = [*cli, "processors", "--only", name, "--log-level", "WARNING"]
            self.children.add(f"processor-{name}", argv, env)

    def banner(self) -> str:
        st, gateway = self.state, self.gateway
        api_url = gateway.api_url if gateway else ""
        cli = ".venv/bin/agent-factory"
        if self.settings.data_dir != Settings.model_fields["data_dir"].default:
            cli += f" --data-dir {shlex.quote(str(self.settings.data_dir))}"  # or it finds another up
        return "\n".join([
            "",
            "Agent Factory is up.",
            f"  API        {api_url}   (token in {self.settings.data_dir / names.STATE_FILE})",
            f"  NATS       {redacted(self.cluster.urls[0] if self.cluster else st.nats_url or '')}"
            f"   (credentials in {names.STATE_FILE})",
            *([f"             and {', '.join(redacted(url) for url in self.cluster.urls[1:])}"]
              if self.cluster else []),
            f"  PostgreSQL {st.database_url}",
            f"  workers    {len(self.children.named('worker-')) if self.children else 0} pool(s), agents: "
            + ", ".join(gateway.registry.keys() if gateway else []),
            f"  processors {', '.join(self.settings.processor_names) or 'off (AF_PROCESSORS=off)'}",
            "",
            "Try, in another terminal:",
            f"  {cli} run fuel-combustion "
            "--input '{\"fuel\": \"diesel\", \"quantity\": 100, \"unit\": \"L\"}' --wait",
            f"  {cli} status",
            "",
            "Ctrl-C drains in-flight work and stops everything; a second Ctrl-C forces it.",
        ])  # fmt: skip

    def force(self, why: str) -> None:
        """Stop at once: abandon what is left of the orderly stop, kill the
        workers and the servers."""
        if not self.forced.is_set():
            self._say(f"{why}: forcing the stop (killing workers and servers) …")
            self.forced.set()

    async def stop(self) -> None:
        """Stop everything in reverse order, each step bounded and all within
        ``stop_timeout_s``; then the children (workers, servers), always, in
        at most 25 s more (7 s once forced or past a step's deadline)."""
        shutdown = Shutdown(self._say, self.forced, self.abandoned)
        await shutdown.run(self._stop_steps(), self.stop_timeout_s or self.settings.drain_timeout_s + 20)
        await self._stop_children()
        if self._lock is None:
            return  # refused the data dir: nothing of ours ran
        with contextlib.suppress(OSError):  # say we are gone, then let the data dir go
            write_state(self.settings.data_dir, self.state, pid=None)
        os.close(self._lock)
        self._lock = None
        self._say(f"stopped; abandoned: {', '.join(self.abandoned)}" if self.abandoned else "stopped.")

    def _stop_steps(self) -> list[StopStep]:
        """The worker pools' drain first (the API still answers), then the gateway's steps."""
        steps: list[StopStep] = []
        if self._supervisor is not None:
            steps.append(("the worker supervisor", self._stop_supervisor, STEP_TIMEOUT_S))
        if self.children is not None and self.children.children:
            steps.append(("the workers' drain", self._drain_workers, self.settings.drain_timeout_s + 10))
        if self._logs is not None:
            steps.append(("the log stream", self._stop_log_stream, STEP_TIMEOUT_S))
        if self.gateway is not None:
            steps += self.gateway.stop_steps()
        return steps

    async def _stop_log_stream(self) -> None:
        assert self._logs is not None
        self._logs.detach()
        await self._logs.stop()

    async def _stop_supervisor(self) -> None:
        assert self._supervisor is not None
        self._supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._supervisor

    async def _drain_workers(self) -> None:
        """SIGTERM: the pools drain, the processors commit what they processed."""
        assert self.children is not None
        self._say("draining workers …")
        await self.children.terminate()

    async def _stop_children(self) -> None:
        """Kill the workers still running, stop the servers; bounded, and at
        once if forced (then or while it runs)."""
        if self.children is not None:
            await self.children.kill()
        hurry = self.forced.is_set() or bool(self.abandoned)
        if hurry and self.gateway is not None and self.gateway.pool is not None:
            self.gateway.pool.terminate()  # no reconnect attempts (and warnings) as the server goes
        grace = 2.0 if hurry else SERVERS_STOP_S
        stops: dict[asyncio.Future[None], str] = {}
        crash: list[tuple[int | None, signal.Signals]] = []
        if self.postgres is not None:
            crash.append((self.postgres.pid, signal.SIGQUIT))  # PostgreSQL's immediate shutdown
            stops[asyncio.ensure_future(asyncio.to_thread(self.postgres.stop, grace))] = "PostgreSQL"
        if self.nats is not None:
            crash.append((self.nats.pid, signal.SIGKILL))
            stops[asyncio.ensure_future(asyncio.to_thread(self.nats.stop, grace))] = "nats-server"
        if self.cluster is not None:
            crash += [(node.pid, signal.SIGKILL) for node in self.cluster.nodes]
            stops[asyncio.ensure_future(asyncio.to_thread(self.cluster.stop, grace))] = "the nats-servers"
        if not stops:
            return
        stopped: asyncio.Future[Any] = asyncio.gather(*stops, return_exceptions=True)
        forced = asyncio.ensure_future(self.forced.wait())
        await asyncio.wait({stopped, forced}, timeout=grace + 5, return_when=asyncio.FIRST_COMPLETED)
        if not stopped.done() and self.forced.is_set():  # forced while they stop in order: crash them
            for pid, sig in crash:
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            await asyncio.wait({stopped}, timeout=5)
        forced.cancel()
        for stopping, server in stops.items():
            if not stopping.done():
                self.abandoned.append(server)
                self._say(f"{server} did not stop; abandoning it")
            elif stopping.exception() is not None:
                self._say(f"{server} failed to stop: {stopping.exception()!r}")


async def _start(platform: Platform) -> None:
    """``platform.start()``, unless forced first (then it is abandoned)."""
    starting = asyncio.ensure_future(platform.start())
    force = asyncio.ensure_future(platform.forced.wait())
    await asyncio.wait({starting, force}, return_when=asyncio.FIRST_COMPLETED)
    force.cancel()
    if not starting.done():
        starting.cancel()
        platform.abandoned.append("the start")
        return
    starting.result()


async def run_up(settings: Settings) -> None:
    # The embedded dev mode's defaults, decided here for the children too (they are
    # given AF_NATS_URL, so would take themselves for production).
    os.environ.setdefault("AF_TRACE_SAMPLE_RATIO", str(settings.sample_ratio))
    os.environ.setdefault("AF_LOG_FORMAT", "json" if settings.log_json else "text")
    configure_logging(settings, "gateway")
    metrics.cap_tenant_labels(settings.metrics_tenant_cap)
    with tracing(settings, "gateway"):
        await _run_up(settings)


async def _run_up(settings: Settings) -> None:
    platform = Platform(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            platform.force(f"{sig.name} while stopping")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    error: BaseException | None = None
    try:
        await _start(platform)
        if not stop.is_set():
            click.echo(platform.banner(), err=True)
        await stop.wait()
    except BaseException as exc:
        error = exc
        raise
    finally:
        await platform.stop()
        if not platform.clean:
            _exit_at_once(error)


def _exit_at_once(error: BaseException | None) -> NoReturn:
    """Exit without asyncio.run's teardown, which would wait for what the stop
    abandoned (for ever, if it ignores cancels), nor for threads still running."""
    if error is not None:
        click.echo(f"Error: up failed: {error}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)

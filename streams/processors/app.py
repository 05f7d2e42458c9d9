"""A stream processor is a Faust app on ``af-executions``; this module builds and runs one.

Each processor (``metering``, ``breaker``, ``canary``) is a module with
``install(app, source, config)``, which adds its agents, tables and timers to
the app :func:`processor_app` made. Its group is ``af-<name>``: any number of
replicas of a processor share the partitions through the driver's group
membership, and each processor reads every event (groups are independent).

Decisions a processor computes go to KV over a connection of their own
(:class:`Decisions`), so a breaker trip never waits behind megabytes of
records and changelog writes on the app's shared connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import faust
from mode import Service
from nats.aio.client import Client
from nats.js import JetStreamContext

from mesh.wire.connection import connect, jetstream
from streams.processors import PROCESSORS
from streams.processors.executions import EXECUTIONS_TOPIC, declare_executions

__all__ = [
    "Decisions",
    "LogPublishing",
    "ProcessorConfig",
    "StreamedLog",
    "prepare",
    "processor_app",
    "run_processor",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessorConfig:
    """How to run a processor. ``nats_url``: one URL, or a cluster's, comma-separated.
    ``options``: the processor's own settings (each module documents and validates them)."""

    nats_url: str
    partitions: int
    replicas: int = 1
    session_timeout_s: float = 6.0
    heartbeat_s: float = 1.0
    commit_interval_s: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    # Faust's working directory (its default is ``<app id>-data`` in the current one,
    # which left empty directories wherever a processor ran): ``<dir>/<app id>``
    datadir: str = field(default_factory=lambda: os.path.join(tempfile.gettempdir(), "af-processors"))

    @property
    def broker(self) -> str:
        first, *others = [u.strip() for u in self.nats_url.split(",") if u.strip()]
        query = f"session_timeout={self.session_timeout_s}&heartbeat={self.heartbeat_s}"
        return ";".join([f"{first}{'&' if '?' in first else '?'}{query}", *others])


class Decisions(Service):
    """The processor's own NATS connection, for the KV writes that are its decisions."""

    def __init__(self, app: faust.App, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("the processor's decisions connection is not open (the app has not started)")
        return self._js

    async def on_start(self) -> None:
        self.nc, self._js = await self.app.transport.open_dedicated("decisions")  # type: ignore[attr-defined]

    async def on_stop(self) -> None:
        nc, self.nc, self._js = self.nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()


class StreamedLog(Protocol):
    """A log handler that publishes from a task of its own over a NATS connection it is
    given (``gateway.telemetry.LogStream``: the processor's lines into ``AF_LOGS``)."""

    async def start(self, nc: Client) -> None: ...
    async def stop(self) -> None: ...


class LogPublishing(Service):
    """Runs a :class:`StreamedLog` on a connection of its own while the app runs, so log
    lines never queue behind records; what is logged after it stopped stays on stderr."""

    def __init__(self, app: faust.App, handler: StreamedLog, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app, self.handler = app, handler
        self.nc: Client | None = None

    async def on_start(self) -> None:
        self.nc, _ = await self.app.transport.open_dedicated("logs")  # type: ignore[attr-defined]
        await self.handler.start(self.nc)

    async def on_stop(self) -> None:
        await self.handler.stop()
        nc, self.nc = self.nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()


def processor_app(name: str, config: ProcessorConfig, **conf: Any) -> tuple[faust.App, faust.TopicT]:
    """The Faust app of processor ``name`` and its source topic (``af-executions``)."""
    # Faust makes its own directory, not its parents: on a fresh machine there is no
    # <tmp>/af-processors (or <AF_DATA_DIR>/processors) yet, and the worker died at start.
    os.makedirs(config.datadir, exist_ok=True)
    app = faust.App(
        f"af-{name}",
        broker=config.broker,
        store="memory://",
        web_enabled=False,
        topic_partitions=config.partitions,
        topic_replication_factor=config.replicas,
        broker_commit_interval=config.commit_interval_s,
        **{"datadir": os.path.join(config.datadir, f"af-{name}"), **conf},
    )
    source = app.topic(EXECUTIONS_TOPIC, value_serializer="raw", partitions=config.partitions)
    return app, source


def installer(name: str) -> Callable[[faust.App, faust.TopicT, ProcessorConfig], Any]:
    if name not in PROCESSORS:
        raise ValueError(f"no processor {name!r} (known: {', '.join(PROCESSORS) or 'none'})")
    module = importlib.import_module(f"{__package__}.{name}")
    install: Callable[[faust.App, faust.TopicT, ProcessorConfig], Any] = module.install
    return install


def build(name: str, config: ProcessorConfig, **conf: Any) -> faust.App:
    """Processor ``name``'s app with its agents and tables installed."""
    install = installer(name)
    app, source = processor_app(name, config, **conf)
    install(app, source, config)
    return app


async def prepare(nats_url: str, replicas: int = 1, name: str | None = None) -> int:
    """Declare ``af-executions`` (before any processor's consumer would create it
    without its sources), and what processor ``name`` needs before it starts
    (its module's ``prepare(js, partitions, replicas)``, if it has one);
    returns the partition count."""
    nc = await connect(nats_url, name="af-processors-prepare")
    try:
        js = await jetstream(nc)
        spec = await declare_executions(js, replicas)
        own = getattr(importlib.import_module(f"{__package__}.{name}"), "prepare", None) if name else None
        if own is not None:
            await own(js, spec.partitions, replicas)
    finally:
        await nc.close()
    return spec.partitions


def run_processor(
    name: str,
    nats_url: str,
    replicas: int = 1,
    loglevel: str = "INFO",
    session_timeout_s: float = 6.0,
    loghandlers: Sequence[logging.Handler] = (),
    log_stream: StreamedLog | None = None,
    **options: Any,
) -> None:
    """Run processor ``name`` in this process until SIGINT/SIGTERM (a graceful stop
    commits what was processed). Blocks; owns the event loop.

    ``loghandlers`` replace Faust's own stderr handler (none given: Faust's); the
    root logger is at ``loglevel``. ``log_stream``, a :class:`logging.Handler`
    too, gets every record (Faust's own included) and is started on the app's
    loop (:class:`LogPublishing`)."""
    installer(name)  # an unknown name is refused before anything starts
    partitions = asyncio.run(prepare(nats_url, replicas, name))
    config = ProcessorConfig(
        nats_url=nats_url, partitions=partitions, replicas=replicas, options=options,
        session_timeout_s=session_timeout_s, heartbeat_s=min(1.0, session_timeout_s / 4),
    )  # fmt: skip
    if data_dir := os.environ.get("AF_DATA_DIR"):  # up's data dir: beside its servers' data
        config = replace(config, datadir=os.path.join(data_dir, "processors"))
    # Faust's worker replaces the root logger's handlers: ours are handed to it.
    handlers = [*loghandlers, *([cast(logging.Handler, log_stream)] if log_stream is not None else [])]
    conf: dict[str, Any] = {"loghandlers": handlers}
    if loghandlers:  # instead of its own: a configuration with no handler of its own
        root = {"level": loglevel, "handlers": []}
        conf["logging_config"] = {"version": 1, "disable_existing_loggers": False, "root": root}
    app = build(name, config, **conf)
    if log_stream is not None:
        app.service(LogPublishing(app, log_stream))  # type: ignore[arg-type]  # an instance, as Decisions
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()

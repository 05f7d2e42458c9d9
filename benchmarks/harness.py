"""What every suite shares: its own servers (one nats-server or a cluster), the
raw clients, CPU clocks, the time of the last ack, one percentile, and waits that end.

Every suite starts its own servers in a temp dir, so numbers never mix with a
running ``up``. A ratio compares our path with raw nats-py measured seconds
earlier on the same server; the raw side is measured with both clients it can
fairly be given (:func:`raw_connect`) and the stronger one is the ceiling.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import os
import resource
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import click
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import ServiceUnavailableError

from agents.store.embedded import EmbeddedPostgres
from gateway.settings import Settings
from mesh.cluster import NatsCluster
from mesh.embedded import NatsServer
from mesh.wire import protocol

__all__ = [
    "PENDING_SIZE",
    "RAW_CLIENTS",
    "CpuClock",
    "CpuUse",
    "Nodes",
    "RawClient",
    "Round",
    "Servers",
    "compare",
    "last_ack_at",
    "nats_nodes",
    "percentile",
    "process_cpu_s",
    "raw_fetch",
    "raw_connect",
    "say",
    "server_cpu_s",
    "servers",
    "wait_until",
]

#: The raw side's two clients: ``plain`` is nats-py as anyone installs it;
#: ``lean`` is nats-py with the parser :func:`mesh.wire.connection.connect`
#: installs on every connection of ours (:func:`mesh.wire.protocol.install`),
#: so that a ratio never credits us with a faster parser the ceiling lacked.
RawClient = Literal["plain", "lean"]
RAW_CLIENTS: tuple[RawClient, ...] = ("plain", "lean")

#: The outgoing buffer :func:`mesh.wire.connection.connect` gives our connections.
PENDING_SIZE = 64 * 1024 * 1024


def say(text: str) -> None:
    """Progress on stderr, so stdout stays one JSON document."""
    click.echo(text, err=True)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``q``% of
    all values at or below it (NaN when there are none)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


@dataclass(frozen=True)
class Nodes:
    """The nats-server a suite runs on, or every node of the cluster it runs on;
    a cluster's streams get one replica per node."""

    servers: list[NatsServer]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what :func:`mesh.wire.connection.connect` takes)."""
        return ",".join(server.url for server in self.servers)

    @property
    def pids(self) -> list[int | None]:
        return [server.pid for server in self.servers]

    @property
    def replicas(self) -> int:
        return len(self.servers)

    @property
    def sync_interval(self) -> str:
        return self.servers[0].sync_interval


@dataclass
class Servers:
    nats: NatsServer
    tmp: Path
    postgres: EmbeddedPostgres | None = None


@contextlib.asynccontextmanager
async def nats_nodes(
    size: int = 1, sync_interval: str | None = None, tmp: Path | None = None
) -> AsyncIterator[Nodes]:
    """One nats-server (``size`` 1) or a ``size``-node cluster, under ``tmp``
    or a temp dir of its own.

    ``sync_interval`` defaults to AF_NATS_SYNC_INTERVAL, so its cost can be
    measured (docs/durability.md).
    """
    if tmp is None:
        with tempfile.TemporaryDirectory(prefix="af-bench-") as own:
            async with nats_nodes(size, sync_interval, Path(own)) as nodes:
                yield nodes
        return
    sync = sync_interval or Settings().nats_sync_interval
    if size == 1:
        server = NatsServer(tmp / "nats", sync_interval=sync)
        server.start()
        try:
            yield Nodes([server])
        finally:
            server.stop()
        return
    cluster = NatsCluster(tmp / "cluster", size=size, sync_interval=sync)
    cluster.start()
    try:
        yield Nodes(cluster.nodes)
    finally:
        cluster.stop()


@contextlib.asynccontextmanager
async def servers(*, postgres: bool = False) -> AsyncIterator[Servers]:
    """A nats-server (and PostgreSQL if asked) of the suite's own, in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="af-bench-") as tmp:
        async with nats_nodes(tmp=Path(tmp)) as nodes:
            if not postgres:
                yield Servers(nodes.servers[0], Path(tmp))
                return
            pg = EmbeddedPostgres(Path(tmp) / "pg")
            await asyncio.to_thread(pg.start)
            try:
                yield Servers(nodes.servers[0], Path(tmp), pg)
            finally:
                await asyncio.to_thread(pg.stop)


async def raw_connect(url: str, name: str, client: RawClient = "plain") -> Client:
    """A connection for the raw ceiling: plain ``nats.connect`` with our outgoing
    buffer size, and with our parser when ``client`` is ``lean``. ``url`` may
    list a cluster's nodes, comma-separated, as for our own connections."""
    nc = await nats.connect(url.split(","), name=name, pending_size=PENDING_SIZE)
    if client == "lean":
        protocol.install(nc)
    return nc


#: How long a raw consumer waits after a 503 before it pulls again.
_UNAVAILABLE_PAUSE_S = 0.05


async def raw_fetch(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """One raw ``fetch`` (:class:`TimeoutError` when nothing came within ``timeout``).

    A consumer just created on a replicated stream answers 503 until its group
    has a leader (3 of 150 fresh R3 consumers on a 3-node cluster here; a
    ``bench queue --cluster 3`` ended on it): the raw side pauses and returns
    nothing, so its loop asks again, as our own pull loop does.
    """
    try:
        return await sub.fetch(batch, timeout=timeout)
    except ServiceUnavailableError:
        await asyncio.sleep(_UNAVAILABLE_PAUSE_S)
        return []


class CpuUse(NamedTuple):
    started_at: float  # wall clock (time.time()) when the clock started
    process_s: float  # CPU seconds of this process
    server_s: float | None  # CPU seconds of nats-server (Linux only)


def server_cpu_s(pids: Sequence[int | None]) -> float | None:
    """CPU seconds the nats-server processes (a cluster's nodes: their sum)
    have used so far, from ``/proc`` (None elsewhere)."""
    total = 0.0
    for pid in pids:
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None
    return total


def process_cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


class CpuClock:
    """CPU seconds of this process and of nats-server (every node) from :meth:`start` to :meth:`stop`."""

    def __init__(self, server_pids: Sequence[int | None]) -> None:
        self.server_pids = server_pids
        self.started_at = 0.0
        self._process = 0.0
        self._server: float | None = None

    def start(self) -> None:
        self._process, self._server = process_cpu_s(), server_cpu_s(self.server_pids)
        self.started_at = time.time()

    def stop(self) -> CpuUse:
        server_now = server_cpu_s(self.server_pids)
        server = None if server_now is None or self._server is None else server_now - self._server
        return CpuUse(self.started_at, process_cpu_s() - self._process, server)


async def last_ack_at(js: JetStreamContext, stream: str, consumer: str, timeout: float = 30.0) -> float:
    """When nats-server applied the last ack of ``consumer`` (wall clock, seconds),
    once nothing is pending or unacknowledged: where every throughput window ends.

    The server's clock, not the client's: both sides of a ratio, in one process
    or several, end at the same kind of event, and nothing on the hot path
    pays for noticing it (the ack floor records its time; same machine, same clock).
    """
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(stream, consumer)
        settled = info.num_ack_pending == 0 and info.num_pending == 0
        if settled and info.ack_floor is not None and info.ack_floor.last_active is not None:
            return float(info.ack_floor.last_active.timestamp())
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"bench: {stream}/{consumer} still has {info.num_ack_pending} unacknowledged and "
                f"{info.num_pending} pending messages after {timeout} s"
            )
        await asyncio.sleep(0.005)


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str, interval: float = 0.02
) -> None:
    """Return once ``condition()`` holds; :class:`TimeoutError` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


class Round(NamedTuple):
    """One timed round of a throughput comparison."""

    per_s: float
    cpu_us: dict[str, float | None]  # CPU per item, by process: "python", "producer", "server", …


def _per_s(r: Round) -> float:
    return r.per_s


def compare(ours: list[Round], raw: dict[RawClient, list[Round]], per_s_key: str) -> dict[str, Any]:
    """Our best round against the best round of the stronger raw client (the
    ceiling), each client's best, every round, and the CPU per item of the two
    rounds compared. Rounds alternate between the sides, so a burst of load
    from elsewhere on the machine hits both alike and does not decide the ratio."""
    best = max(ours, key=_per_s)
    best_raw = {client: max(rounds, key=_per_s) for client, rounds in raw.items()}
    ceiling = max(best_raw.values(), key=_per_s)

    def cpu(r: Round) -> dict[str, float | None]:
        return {name: None if us is None else round(us, 1) for name, us in r.cpu_us.items()}

    return {
        per_s_key: round(best.per_s, 1),
        "ceiling_per_s": round(ceiling.per_s, 1),
        "ratio": round(best.per_s / ceiling.per_s, 3),
        **{f"ceiling_{client}_per_s": round(r.per_s, 1) for client, r in best_raw.items()},
        "rounds": {
            per_s_key: [round(r.per_s) for r in ours],
            **{f"ceiling_{client}_per_s": [round(r.per_s) for r in rounds] for client, rounds in raw.items()},
        },
        "cpu_us_per_task": {"ours": cpu(best), "raw": cpu(ceiling)},
    }

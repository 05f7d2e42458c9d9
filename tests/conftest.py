"""Session fixtures: one real nats-server and one real PostgreSQL for the whole run.

Both bind a free loopback port and keep their data in a temp dir, so several
test runs (and helpers) can run side by side.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.store.migrations import apply_migrations
from mesh import trace
from mesh.embedded import NatsServer
from mesh.wire.connection import connect, jetstream

warnings.filterwarnings("ignore", module="platformdirs")


@pytest.fixture(scope="session", autouse=True)
def faust_datadir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Faust apps keep ``<app id>-data`` in the working directory unless told otherwise;
    send every test app (and the worker processes the tests spawn) to a temp dir."""
    os.environ["APP_DATADIR"] = str(tmp_path_factory.mktemp("faust") / "{conf.name}")
    yield
    os.environ.pop("APP_DATADIR", None)


@pytest.fixture(scope="session", autouse=True)
def package_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`agent fetch` caches what it downloads (gateway.package_cache): in a temp dir
    here, never the user's ~/.cache."""
    os.environ["AF_CACHE_DIR"] = str(tmp_path_factory.mktemp("package-cache"))
    yield
    os.environ.pop("AF_CACHE_DIR", None)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from agents.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(tmp_path_factory.mktemp("pg")) / "data")
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def database_url(postgres: object) -> str:
    return str(postgres.url)  # type: ignore[attr-defined]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session's PostgreSQL, every migration applied. Twelve
    connections: the lifecycle race test runs ten managers at once."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=12)
    async with pool.acquire() as conn:
        await apply_migrations(conn)
    yield pool
    await pool.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, name="pytest")
    yield client
    await client.drain()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    return await jetstream(nc)


_provisioned: set[str] = set()


@pytest.fixture
async def mesh_js(js: JetStreamContext, nats_url: str) -> JetStreamContext:
    """A JetStream context on a server provisioned with the platform's streams/buckets."""
    from mesh.provision import provision

    if nats_url not in _provisioned:
        await provision(js)
        _provisioned.add(nats_url)
    return js


@pytest.fixture
async def queue(nc: Client, mesh_js: JetStreamContext) -> AsyncIterator[object]:
    from mesh.queue.producer import TaskQueue

    async with TaskQueue(nc, mesh_js) as q:
        yield q


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """This process records every span into the SDK's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.use(provider)
    try:
        yield exporter
    finally:
        trace.use(None)
        provider.shutdown()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own (its state in ``tmp_path``), stopped after it."""
    server = NatsServer(tmp_path / "nats")
    server.start()
    yield server
    server.stop()

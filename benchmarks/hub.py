"""Hub benchmark: publish, download and install of a 1 MB and a 20 MB archive, and
search over 1,000 indexed packages.

* **publish / download** (MB/s): :class:`~agents.hub.Hub`'s publish (upload to the
  object store, index row) and download (read back, SHA-256 checked against the
  index, download counted), best of ``rounds``. The ceilings, on the same server:
  nats-py's object store put of the same bytes (``raw_put``), and nats-py pulling
  the same object's chunks in batches of 256 from a consumer (``raw_get``: what
  JetStream gives, no checks); ``*_ratio`` says what the hub keeps of them.
  ``nats_py_get`` is nats-py's own object store read, for comparison.
* **install** (MB/s): :class:`~agents.hub.install.Installer` installing a real
  ``.glpack`` of that size (download checked against the index, the archive
  checked in full and extracted, the version registered in PostgreSQL), best of
  ``rounds``; ``install_ratio`` against ``raw_get``.
* **search**: ``searches`` queries one after another (words, a name prefix, a tag),
  as a tenant (row security on), over :data:`PACKAGES` indexed versions of
  :data:`PACKAGES` // 2 packages; ``search_p50_ms`` / ``search_p99_ms``.
* **resolve**: a 100-agent graph with diamonds (:mod:`benchmarks.resolver`),
  ``resolver_median_ms``.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from agents.hub import Hub, HubPackage, Published
from agents.hub.install import Installer
from agents.packaging import TrustPolicies, pack_bytes
from agents.store.hub_index import insert_package
from agents.store.migrations import apply_migrations
from agents.store.tenancy import app_pool, tenant_scope
from benchmarks.harness import Servers, percentile, say
from benchmarks.resolver import bench_resolver
from mesh import names
from mesh.provision import provision
from mesh.wire.connection import connect, jetstream

__all__ = ["PACKAGES", "bench_hub"]

PACKAGES = 1000
SIZES_MB = (1, 20)
_WORDS = ("fuel", "grid", "scope", "freight", "waste", "steel", "cement", "travel", "refrigerant", "heat")


async def bench_hub(env: Servers, rounds: int = 3, searches: int = 500) -> dict[str, Any]:
    assert env.postgres is not None
    owner = await asyncpg.connect(env.postgres.url)
    try:
        await apply_migrations(owner)
    finally:
        await owner.close()
    nc = await connect(env.nats.url, name="bench-hub")
    pool = await app_pool(env.postgres.url, size=4)
    try:
        js = await jetstream(nc)
        await provision(js)
        hub = Hub(pool, nc, js)
        result: dict[str, Any] = {}
        for mb in SIZES_MB:
            say(f"bench hub: publish and download of {mb} MB, best of {rounds} …")
            result[f"{mb}mb"] = await _transfer(hub, js, mb, rounds)
            say(f"bench hub: install of a {mb} MB package, best of {rounds} …")
            installed = await _install(hub, mb, rounds)
            result[f"{mb}mb"] |= installed | {
                "install_ratio": round(
                    installed["install_mb_per_s"] / result[f"{mb}mb"]["raw_get_mb_per_s"], 3
                )
            }
        say(f"bench hub: search over {PACKAGES} indexed versions, {searches} queries …")
        result |= await _search(hub, pool, searches)
        say("bench hub: resolving a 100-agent graph with diamonds, median of 20 …")
        result |= bench_resolver(agents=100, rounds=20)
        return result
    finally:
        await pool.close()
        await nc.close()


async def _transfer(hub: Hub, js: Any, mb: int, rounds: int) -> dict[str, float]:
    data = os.urandom(mb * 1024 * 1024)
    store = await js.object_store(names.OBJECTS_PACKAGES)
    best = {"publish": 0.0, "download": 0.0, "raw_put": 0.0, "raw_get": 0.0, "nats_py_get": 0.0}

    def note(kind: str, started: float) -> None:
        best[kind] = max(best[kind], mb / (time.perf_counter() - started))

    name = f"bench-{mb}mb-{os.urandom(4).hex()}"
    for i in range(rounds):
        t0 = time.perf_counter()
        await hub.publish(data, Published(name, f"1.0.{i}"), tenant=None, publisher="bench")
        note("publish", t0)
        t0 = time.perf_counter()
        _, back = await hub.download(name, f"1.0.{i}", tenant=None)
        note("download", t0)
        assert back == data
        t0 = time.perf_counter()
        await store.put(f"raw/{name}/{i}", data)
        note("raw_put", t0)
        t0 = time.perf_counter()
        assert await _raw_get(js, f"raw/{name}/{i}") == data
        note("raw_get", t0)
        t0 = time.perf_counter()
        raw = io.BytesIO()
        await store.get(f"raw/{name}/{i}", writeinto=raw)
        note("nats_py_get", t0)
        await store.delete(f"raw/{name}/{i}")
    return {
        "publish_mb_per_s": round(best["publish"], 1),
        "download_mb_per_s": round(best["download"], 1),
        "raw_put_mb_per_s": round(best["raw_put"], 1),
        "raw_get_mb_per_s": round(best["raw_get"], 1),
        "nats_py_get_mb_per_s": round(best["nats_py_get"], 1),
        "publish_ratio": round(best["publish"] / best["raw_put"], 3),
        "download_ratio": round(best["download"] / best["raw_get"], 3),
    }


async def _install(hub: Hub, mb: int, rounds: int) -> dict[str, float]:
    """Install a real package of ``mb`` MB (an incompressible data file in it), ``rounds`` versions."""
    name = f"bench-install-{mb}mb-{os.urandom(4).hex()}"
    best = 0.0
    with tempfile.TemporaryDirectory(prefix="bench-install-") as scratch:
        root = Path(scratch)
        installer = Installer(hub, root / "packages", TrustPolicies())
        for i in range(rounds):
            version = f"1.0.{i}"
            await hub.publish(_package(root / f"tree-{i}", name, version, mb), Published(name, version),
                              tenant=None, publisher="bench")  # fmt: skip
            t0 = time.perf_counter()
            await installer.install(name, version, hub_tenant=None, actor="bench")
            best = max(best, mb / (time.perf_counter() - t0))
    return {"install_mb_per_s": round(best, 1)}


def _package(tree: Path, name: str, version: str, mb: int) -> bytes:
    (tree / "bench_pkg").mkdir(parents=True)
    (tree / "bench_pkg" / "__init__.py").write_text("")
    (tree / "bench_pkg" / "factors.bin").write_bytes(os.urandom(mb * 1024 * 1024))
    (tree / "agent.pack.yaml").write_text(
        f"spec_version: 1\nname: {name}\nversion: {version}\ntype: deterministic\n"
        "entry_point: bench_pkg.agent:Bench\n"
    )
    return pack_bytes(tree)[0]


async def _raw_get(js: Any, name: str) -> bytes:
    """An object's chunks pulled with nats-py's own pull consumer, 256 at a time."""
    store = await js.object_store(names.OBJECTS_PACKAGES)
    info = await store.get_info(name)
    subject = f"$O.{names.OBJECTS_PACKAGES}.C.{info.nuid}"
    sub = await js.pull_subscribe(subject, stream=f"OBJ_{names.OBJECTS_PACKAGES}")
    parts: list[bytes] = []
    try:
        while len(parts) < info.chunks:
            parts.extend(m.data for m in await sub.fetch(min(256, info.chunks - len(parts)), timeout=5))
    finally:
        await sub.unsubscribe()
    return b"".join(parts)


async def _search(hub: Hub, pool: asyncpg.Pool, searches: int) -> dict[str, Any]:
    rng = random.Random(7)
    async with tenant_scope(pool, None) as conn:
        for i in range(PACKAGES):
            words = rng.sample(_WORDS, 3)
            name = f"bench-{words[0]}-{i // 2}"
            digest = hashlib.sha256(name.encode()).hexdigest()
            await insert_package(conn, HubPackage(
                name=name, version=f"1.{i % 2}.0", tenant=None if i % 5 else "acme",
                description=f"{' '.join(words)} emissions, scope {i % 3 + 1}",
                tags=[words[1], f"scope{i % 3 + 1}"],
                digest=digest, size_bytes=1, object=f"bench/{name}", publisher="bench",
            ))  # fmt: skip
    queries = [
        ("fuel", None),
        ("bench-grid", None),
        ("", ["scope2"]),
        ("steel cement", None),
        ("heat", ["waste"]),
    ]
    latencies: list[float] = []
    found = 0
    for i in range(searches):
        text, tags = queries[i % len(queries)]
        t0 = time.perf_counter()
        hits = await hub.search(text, tags, tenant="globex", limit=20)
        latencies.append((time.perf_counter() - t0) * 1000)
        found += len(hits)
    return {
        "indexed": PACKAGES,
        "searches": searches,
        "search_hits_mean": round(found / searches, 1),
        "search_p50_ms": round(percentile(latencies, 50), 2),
        "search_p99_ms": round(percentile(latencies, 99), 2),
    }

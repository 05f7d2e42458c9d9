"""`agent fetch` through the local cache, against the hub on the real servers: the
second fetch of a version is served from the cache (the hub counts one download), a
damaged cache entry is discarded and downloaded again, and `agent cache ls | clear`
show and empty it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from nats.aio.client import Client
from nats.js import JetStreamContext

from agents.hub import Hub, Published
from gateway.package_cache import PackageCache
from tests.helpers import unique
from tests.integration.gateway.conftest import agent_factory, ok


def _read(written: str) -> bytes:
    return Path(written).read_bytes()


async def test_fetch_uses_the_cache_by_digest_and_downloads_a_damaged_entry_again(
    api: TestClient[Any, Any], pool: asyncpg.Pool, nc: Client, mesh_js: JetStreamContext,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("AF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    name, archive = unique("cached"), b"the archive's bytes " * 100
    await Hub(pool, nc, mesh_js).publish(archive, Published(name, "1.0.0"), tenant=None, publisher="t")

    first = json.loads(ok(await agent_factory(api, "agent", "fetch", name, "-o", "json")))
    assert first["from_cache"] is False and _read(first["file"]) == archive
    second = json.loads(ok(await agent_factory(api, "agent", "fetch", f"{name}@1.0.0", "-o", "json")))
    assert second["from_cache"] is True and _read(second["file"]) == archive
    shown = await (await api.get(f"/api/v1/hub/packages/{name}/1.0.0")).json()
    assert shown["downloads"] == 1  # the second came from the cache

    cache = PackageCache(tmp_path / "cache")
    cache.path(first["digest"]).write_bytes(b"damaged")
    third = json.loads(ok(await agent_factory(api, "agent", "fetch", name, "-o", "json")))
    assert third["from_cache"] is False and _read(third["file"]) == archive
    assert cache.get(first["digest"]) == archive  # put back, intact

    listed = json.loads(ok(await agent_factory(api, "agent", "cache", "ls", "-o", "json")))
    assert [(p["name"], p["version"], p["sha256"]) for p in listed["packages"]] == [
        (name, "1.0.0", first["digest"])]  # fmt: skip
    assert name in ok(await agent_factory(api, "agent", "cache", "ls"))
    cleared = json.loads(ok(await agent_factory(api, "agent", "cache", "clear", "-o", "json")))
    assert cleared["removed"] == 1 and cache.entries() == []
    again = json.loads(ok(await agent_factory(api, "agent", "fetch", name, "--no-cache", "-o", "json")))
    assert again["from_cache"] is False

    monkeypatch.setenv("AF_CACHE_DIR", str(tmp_path / "pkg.glpack" / "nowhere"))  # under a file: unwritable
    (tmp_path / "pkg.glpack").write_bytes(b"")
    uncached = await agent_factory(api, "agent", "fetch", name, "-f", "out.glpack", "-o", "json")
    assert uncached.exit_code == 0 and "warning: not cached" in uncached.output, uncached.output
    assert _read("out.glpack") == archive

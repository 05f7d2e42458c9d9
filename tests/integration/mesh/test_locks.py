"""Leases in ``af_locks`` on a real server: one holder at a time, renewals by
compare-and-set, and a dead holder's lock freed by its TTL."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from mesh.locks import LockHeld, LockLost, Locks
from tests.helpers import eventually, unique


async def test_one_holder_at_a_time_and_the_refusal_names_it(mesh_js: JetStreamContext) -> None:
    locks, key = Locks(mesh_js), unique("agent")
    lease = await locks.acquire(key, "manager-a")
    with pytest.raises(LockHeld) as held:
        await locks.acquire(key, "manager-b")
    assert held.value.holder == "manager-a" and held.value.status == 409
    assert "manager-a" in str(held.value)
    await locks.release(lease)
    assert await locks.holder(key) is None
    assert (await locks.acquire(key, "manager-b")).holder == "manager-b"


async def test_racing_managers_exactly_one_wins(mesh_js: JetStreamContext) -> None:
    locks, key = Locks(mesh_js), unique("agent")
    results = await asyncio.gather(
        *(locks.acquire(key, f"manager-{i}") for i in range(10)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    assert len(won) == 1 and all(isinstance(r, LockHeld) for r in results if r not in won)
    assert await locks.holder(key) == won[0].holder  # type: ignore[union-attr]


async def test_a_holder_that_stops_renewing_loses_the_lock_at_its_ttl(mesh_js: JetStreamContext) -> None:
    locks, key = Locks(mesh_js), unique("agent")
    dead = await locks.acquire(key, "died", ttl_s=1)
    started = time.monotonic()
    taken = await eventually(lambda: _try(locks, key, "successor"), 10, "the lock free after its TTL")
    assert time.monotonic() - started >= 0.9  # not before the TTL
    with pytest.raises(LockLost):
        await locks.renew(dead)  # the dead holder's renewal is refused: someone else holds it
    await locks.release(dead)  # and its late release leaves the successor's lock alone
    assert await locks.holder(key) == taken.holder == "successor"


async def test_renewals_keep_a_lock_past_its_ttl(mesh_js: JetStreamContext) -> None:
    locks, key = Locks(mesh_js), unique("agent")
    async with locks.hold(key, "keeper", ttl_s=1) as lost:
        deadline = time.monotonic() + 3  # three TTLs
        while time.monotonic() < deadline:
            with pytest.raises(LockHeld):
                await locks.acquire(key, "intruder")
            await asyncio.sleep(0.2)  # pacing the probes, not synchronisation
        assert not lost.is_set()
    assert await locks.holder(key) is None  # released on exit


async def test_a_ttl_that_the_server_cannot_honour_is_refused(mesh_js: JetStreamContext) -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        await Locks(mesh_js).acquire(unique("agent"), "x", ttl_s=0.5)  # type: ignore[arg-type]


async def _try(locks: Locks, key: str, holder: str) -> object:
    try:
        return await locks.acquire(key, holder)
    except LockHeld:
        return None

"""Each hostile agent is stopped within its limit, recorded with the right
category, leaves no process, file or control group behind, and normal
invocations keep being served meanwhile. Real processes, both levels
("full": what the host has; "no_kernel": rlimits and the uid drop only)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest

from agents.sandbox import ErrorCategory, InvocationResult
from tests.integration.sandbox.boxes import TIGHT, Box, processes

# With full containment an attack is answered well within these; the slack is for a busy 2-core host.
NOOP_MAX_S = 2.0


def _needs_root_for_nproc(box: Box) -> None:
    if os.geteuid() == 0 and not box.sandbox.levels.uid_drop:
        pytest.skip(
            "RLIMIT_NPROC binds no root process and the uid drop is off: fork bombs are not contained"
        )


async def _attack(box: Box, agent: str, **input: object) -> tuple[InvocationResult, float, float]:
    """Run ``agent`` while noop invocations run beside it; its result, its seconds, the slowest noop's."""
    start = time.monotonic()
    attack = asyncio.create_task(box.invoke(agent, json.dumps(input)))
    slowest = await box.noop_while(attack)
    result = await attack
    return result, time.monotonic() - start, slowest


async def test_a_fork_bomb_is_stopped_at_the_process_limit(box: Box) -> None:
    _needs_root_for_nproc(box)
    result, took, slowest = await _attack(box, "fork-bomb", seconds=1.0)
    assert result.category is ErrorCategory.RESOURCE_EXCEEDED, result
    if "pids" in box.sandbox.levels.cgroup_controllers:  # the group's limit, not only the uid's
        assert "memory or process limit" in (result.error or ""), result
    assert took < TIGHT.timeout_s, "stopped by the process limit, not by the clock"
    assert slowest < NOOP_MAX_S
    await box.assert_nothing_left(result)


async def test_memory_ten_times_the_limit_is_refused(box: Box) -> None:
    result, _, slowest = await _attack(box, "memory-hog", limit=10 * TIGHT.memory_bytes // 2**20)
    assert result.category is ErrorCategory.RESOURCE_EXCEEDED, result
    if box.sandbox.levels.cgroup:
        assert result.audit.memory_peak_bytes is not None
        assert result.audit.memory_peak_bytes <= TIGHT.memory_bytes
    assert result.audit.peak_rss_bytes <= TIGHT.address_space_bytes
    assert slowest < NOOP_MAX_S
    await box.assert_nothing_left(result)


async def test_an_infinite_loop_times_out(box: Box) -> None:
    limits = TIGHT.model_copy(update={"timeout_s": 1.0, "grace_s": 1.0})
    start = time.monotonic()
    attack = asyncio.create_task(box.invoke("spinner", '{"seconds": 1e9}', limits=limits))
    async with asyncio.timeout(2.0 + 3.0):
        slowest = await box.noop_while(attack)
        result = await attack
    assert result.category is ErrorCategory.TIMEOUT, result
    assert 1.0 <= time.monotonic() - start < 1.0 + 1.0 + 1.0  # SIGTERM at 1 s ends it within the grace
    assert result.audit.signal == 15
    assert slowest < NOOP_MAX_S
    await box.assert_nothing_left(result)


async def test_cpu_seconds_over_the_limit_are_a_resource_error(box: Box) -> None:
    limits = TIGHT.model_copy(update={"cpu_s": 1, "timeout_s": 30.0})
    result = await box.invoke("spinner", '{"seconds": 1e9}', limits=limits)
    assert result.category is ErrorCategory.RESOURCE_EXCEEDED, result
    assert 900 <= result.audit.cpu_ms < 3000  # the clock ticks in 10 ms
    await box.assert_nothing_left(result)


async def test_a_10_gb_file_stops_at_the_file_size_limit(box: Box) -> None:
    result, took, _ = await _attack(box, "disk-filler", limit=10 * 10**9)
    assert result.category is ErrorCategory.RESOURCE_EXCEEDED, result
    assert "File too large" in (result.error or "")
    # what it did write, up to the limit (counted by the fork server before the reap)
    assert TIGHT.file_size_bytes <= result.audit.bytes_written <= TIGHT.file_size_bytes + (1 << 20)
    assert took < 5.0
    await box.assert_nothing_left(result)


async def test_an_agent_ignoring_sigterm_is_killed_after_the_grace(box: Box) -> None:
    limits = TIGHT.model_copy(update={"timeout_s": 0.5, "grace_s": 0.5})
    start = time.monotonic()
    attack = asyncio.create_task(box.invoke("term-ignorer", '{"seconds": 1e9}', limits=limits))
    async with asyncio.timeout(
        1.0 + 3.0
    ):  # a sandbox that never escalates fails here, not at the suite's timeout
        slowest = await box.noop_while(attack)
        result = await attack
    took = time.monotonic() - start
    assert result.category is ErrorCategory.TIMEOUT, result
    assert result.audit.signal == 9
    assert 1.0 <= took < 1.0 + 1.5
    assert slowest < NOOP_MAX_S
    await box.assert_nothing_left(result)


async def test_double_forked_orphans_are_killed_with_their_invocation(box: Box) -> None:
    result, _, slowest = await _attack(box, "orphan-maker", limit=3, seconds=600)
    assert result.ok, result  # the agent itself did its job; what it left behind is killed
    orphans = result.output["done"] if result.output else []
    assert len(orphans) == 3
    if box.sandbox.levels.cgroup:  # without one, orphans die when any invocation ends: counts blur
        assert result.audit.leftover_processes >= 3
    uids = box.sandbox._running().uids
    survivors = [p for p in processes() if p.pid in orphans and (p.uid in uids or not uids)]
    assert survivors == [], "orphans outlived the answer"
    assert slowest < NOOP_MAX_S
    await box.assert_nothing_left(result)


async def test_a_socket_to_localhost_without_network_permission_fails(box: Box) -> None:
    if not box.sandbox.levels.network_namespace:
        pytest.skip("no network namespace on this level: the network is reachable")
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        result, _, slowest = await _attack(box, "connector", port=port)
        assert result.category is ErrorCategory.DEPENDENCY_FAILURE, result
        assert result.audit.network is False
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody got through
        allowed = await box.invoke("connector", json.dumps({"port": port}), network=True)
        assert allowed.ok and allowed.audit.network is True, allowed
        assert slowest < NOOP_MAX_S
        await box.assert_nothing_left(result)
    finally:
        server.close()

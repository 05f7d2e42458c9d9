"""``agent-factory bench sandbox``: what running an agent in the sandbox costs.

The no-op agent is called two ways in the same run: in-process, as
:func:`agents.runtime.agent_handler` does (validate the input, ``run``, dump
the output), and through a :class:`~agents.sandbox.Sandbox` with every
containment level this host allows. ``overhead_p50_ms``/``overhead_p99_ms``
are the difference of the two latency percentiles, one call at a time at a
paced rate (``paced_per_s``, well under the throughput, as the queue's
latency is measured at 1,000 tasks/s): each invocation leaves work behind
(its child's exit, the next warm child's fork), and back to back on two
cores that work competes with the next call (``back_to_back_p50_ms``
says how much). ``invocations_per_s`` is the throughput with as many
invocations in flight as the sandbox has slots; ``cpu_ms_per_invocation`` is
the CPU all processes spent per invocation meanwhile (worker, template,
children), which the host's other load does not change, and
``cpu_bound_per_s_per_core`` the rate one idle core could sustain at that.

The ceiling, measured in the same run so the numbers survive a noisy host:
``bare_fork_p50_ms`` is a ``fork`` + ``_exit`` + ``wait`` of an interpreter
that imported what a template imports (nothing confined, nothing run), and
``overhead_vs_bare_fork`` the sandbox's p50 overhead over it. ``steal_ms_per_invocation``
is the CPU time the hypervisor took from this VM during the throughput
rounds (``/proc/stat``'s steal): when it is high, the absolute rates say
more about the host than about the sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agents.contract import RunContext
from agents.examples.noop import NoOp
from agents.sandbox import Sandbox, SandboxConfig
from benchmarks.harness import percentile, say

__all__ = ["bench_sandbox"]

now = time.perf_counter
INPUT = json.dumps({"echo": {"agent": "fuel-combustion", "litres": 1234.5}})


async def _in_process(n: int) -> list[float]:
    agent, out = NoOp(), []
    for i in range(n):
        start = now()
        parsed = agent.Input.model_validate_json(INPUT)
        output = await agent.run(parsed, RunContext(run_id=str(i)))
        output.model_dump(mode="json")
        out.append(now() - start)
    return out


async def _sequential(sandbox: Sandbox, n: int, per_s: float | None = None) -> list[float]:
    """One call at a time, each started ``1 / per_s`` after the previous one (None: at once)."""
    out = []
    next_at = now()
    for _ in range(n):
        if per_s:
            await asyncio.sleep(max(0.0, next_at - now()))
            next_at += 1 / per_s
        start = now()
        result = await sandbox.invoke("noop", INPUT)
        out.append(now() - start)
        if not result.ok:
            raise RuntimeError(f"bench sandbox: a no-op invocation failed: {result.error}")
    return out


async def _throughput(sandbox: Sandbox, n: int, in_flight: int) -> float:
    left = n

    async def lane() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            result = await sandbox.invoke("noop", INPUT)
            if not result.ok:
                raise RuntimeError(f"bench sandbox: a no-op invocation failed: {result.error}")

    start = now()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return n / (now() - start)


def _cpu_s(*pids: int) -> float:
    """CPU seconds so far of this process, and of ``pids`` with the children they reaped
    (the template, and its fork server: the parent of every invocation's process)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    mine = os.times()
    return ticks / os.sysconf("SC_CLK_TCK") + mine.user + mine.system


def _steal_s() -> float:
    """CPU seconds the hypervisor has taken from this machine so far (all cores)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


_BARE_FORK = """
import gc, os, sys, time
import agents.sandbox.template
from agents.registry import load_agent
load_agent("agents.examples.noop:NoOp")
gc.collect(); gc.freeze()
out = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    out.append(time.perf_counter() - start)
out.sort()
print(out[len(out) // 2])
"""


def _bare_fork_p50_s(n: int) -> float:
    """The p50 of ``fork`` + ``_exit`` + ``wait`` of an interpreter loaded as a template is."""
    done = subprocess.run(
        [sys.executable, "-c", _BARE_FORK, str(n)], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


async def bench_sandbox(
    count: int = 2000, rounds: int = 3, slots: int = 8, paced_per_s: float = 50.0
) -> dict[str, Any]:
    """``count`` invocations per throughput round (the best round counts) and for the
    back-to-back latencies; a quarter of it (at least 20) for the paced ones."""
    config = SandboxConfig(agents=["agents.examples.noop:NoOp"], slots=slots)
    async with Sandbox(config) as sandbox:
        paced_n = max(20, count // 4)
        say(f"bench sandbox: no-op calls in-process and sandboxed, {paced_n} at {paced_per_s}/s, "
            f"{count} back to back …")  # fmt: skip
        await _sequential(sandbox, min(count, 50))  # warm-up: caches, slots
        local = await _in_process(count)
        boxed = await _sequential(sandbox, paced_n, paced_per_s)
        back_to_back = await _sequential(sandbox, count)
        say(f"bench sandbox: {rounds} round(s) of {count} with {slots} in flight …")
        pids = (sandbox.template_pid, sandbox.forker_pid)
        cpu_before, steal_before = _cpu_s(*pids), _steal_s()
        rates = [await _throughput(sandbox, count, slots) for _ in range(rounds)]
        cpu_ms = (_cpu_s(*pids) - cpu_before) * 1000 / (count * rounds)
        steal_ms = (_steal_s() - steal_before) * 1000 / (count * rounds)
        say("bench sandbox: the ceiling, a bare fork + wait of the same interpreter …")
        bare_s = await asyncio.to_thread(_bare_fork_p50_s, paced_n)
        ms = 1000.0
        overhead_p50 = percentile(boxed, 50) - percentile(local, 50)
        return {
            "invocations_per_s": round(max(rates), 1),
            "overhead_p50_ms": round(overhead_p50 * ms, 3),
            "overhead_p99_ms": round((percentile(boxed, 99) - percentile(local, 99)) * ms, 3),
            "sandboxed_p50_ms": round(percentile(boxed, 50) * ms, 3),
            "sandboxed_p99_ms": round(percentile(boxed, 99) * ms, 3),
            "paced_per_s": paced_per_s,
            "back_to_back_p50_ms": round(percentile(back_to_back, 50) * ms, 3),
            "back_to_back_p99_ms": round(percentile(back_to_back, 99) * ms, 3),
            "in_process_p50_ms": round(percentile(local, 50) * ms, 4),
            "in_process_p99_ms": round(percentile(local, 99) * ms, 4),
            "rounds_per_s": [round(r, 1) for r in rates],
            # Worker, template and children together: what the host's other load cannot skew.
            "cpu_ms_per_invocation": round(cpu_ms, 2),
            "cpu_bound_per_s_per_core": round(1000 / cpu_ms, 1),
            "steal_ms_per_invocation": round(steal_ms, 2),
            "bare_fork_p50_ms": round(bare_s * ms, 3),
            "overhead_vs_bare_fork": round(overhead_p50 / bare_s, 2),
            "in_flight": slots,
            "template_rss_mb": round(sandbox.template_rss_bytes() / 2**20, 1),
            "levels": sandbox.levels.as_dict(),
        }

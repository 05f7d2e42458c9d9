"""What the sandbox measured of an invocation becomes the pool's metrics, per agent."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.utils import floatToGoString

from agents.sandbox import InvocationAudit
from agents.sandbox.audit import ErrorCategory
from agents.sandboxed import _observe


def _audit(agent: str, error: ErrorCategory | None, memory_peak: int | None) -> InvocationAudit:
    return InvocationAudit(
        invocation_id="i-1", agent=agent, exit_status=0, signal=None, duration_ms=12.0, cpu_ms=250.0,
        peak_rss_bytes=40 * 2**20, memory_peak_bytes=memory_peak, bytes_written=0, stdout_bytes=0,
        stderr_bytes=0, network=False, leftover_processes=0, error=error,
    )  # fmt: skip


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_invocations_count_by_outcome_with_cpu_in_seconds_and_the_cgroup_peak_before_rss() -> None:
    agent = "sandbox-metrics-probe"
    _observe(_audit(agent, None, memory_peak=100 * 2**20))
    _observe(_audit(agent, ErrorCategory.RESOURCE_EXCEEDED, memory_peak=None))
    assert _sample("af_sandbox_invocations_total", agent=agent, outcome="ok") == 1
    assert _sample("af_sandbox_invocations_total", agent=agent, outcome="resource_exceeded") == 1
    assert _sample("af_sandbox_cpu_seconds_sum", agent=agent) == 0.5
    # 100 MiB charged by the control group; 40 MiB peak RSS when there is none.
    assert _sample("af_sandbox_memory_peak_bytes_sum", agent=agent) == 140 * 2**20
    assert _sample("af_sandbox_memory_peak_bytes_bucket", agent=agent, le=floatToGoString(64 * 2**20)) == 1

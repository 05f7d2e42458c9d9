"""The targets the benchmarks are held to (from the issues), checked against their JSON.

``make bench`` runs the suites as tests (``tests/load``) and fails on any
target missed; :func:`missed` says which, in words a reader can act on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["TARGETS", "Target", "missed"]


class Target(NamedTuple):
    path: str  # dotted path into the suite's JSON
    op: str  # ">=" or "<"
    bound: float


TARGETS: dict[str, list[Target]] = {
    "skeleton": [  # every run accepted reaches PostgreSQL, counted there, within its deadline
        Target("runs_recorded_in_db_per_s", ">=", 1.0),
        Target("runs_missing_from_db", "<", 1.0),
    ],
    "queue": [  # one process, and the production topology: producer and worker apart
        Target("ratio", ">=", 0.5),
        Target("two_processes.ratio", ">=", 0.5),
        Target("p99_ms", "<", 5.0),
    ],
    "messaging": [
        Target("ephemeral.p99_ms", "<", 1.0),
        Target("ephemeral.ratio", ">=", 0.6),
        Target("durable.p99_ms", "<", 5.0),
        Target("durable.ratio", ">=", 0.6),
        Target("request_reply.p99_ms", "<", 2.0),
        Target("request_reply.ratio", ">=", 0.6),
    ],
    "streams": [Target("ratio", ">=", 0.3), Target("events_per_s", ">=", 5000.0)],
    "processors": [  # issue 23: each processor on one worker, and the breaker's reaction
        Target("metering_events_per_s", ">=", 5000.0),
        Target("breaker_events_per_s", ">=", 5000.0),
        Target("canary_events_per_s", ">=", 5000.0),
        Target("breaker_reaction_p99_ms", "<", 1000.0),
    ],
    "api": [Target("p99_ms", "<", 20.0)],  # issue 24: read endpoints, 200 concurrent clients
    "config": [  # issue 24: a change reaches every worker process (3) within 200 ms, none missed
        Target("propagation_p99_ms", "<", 200.0),
        Target("workers", ">=", 3.0),
        Target("missed", "<", 1.0),
    ],
    "hub": [  # issue 26: search over 1,000 indexed packages; resolving 100 agents
        Target("search_p99_ms", "<", 20.0),
        Target("resolver_median_ms", "<", 100.0),
    ],
}


def missed(suite: str, result: dict[str, Any]) -> list[str]:
    """The targets of ``suite`` that ``result`` misses (empty: all met)."""
    out = []
    for target in TARGETS[suite]:
        value: Any = result
        for key in target.path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, int | float):
            out.append(f"{suite}.{target.path}: missing from the result")
        elif not (value >= target.bound if target.op == ">=" else value < target.bound):
            out.append(f"{suite}.{target.path} = {value}, target {target.op} {target.bound}")
    return out

"""Dependency resolution of a generated fleet: layers of agents, each depending on several
of the next layer (diamonds everywhere), several versions each, the newest of some layers
needing a dependency version that does not exist (so the resolver must step back)."""

from __future__ import annotations

import statistics
import time
from typing import Any

from agents.packaging.resolver import Index, resolve

__all__ = ["bench_resolver", "fleet_index"]


def fleet_index(agents: int = 100, width: int = 10, versions: int = 4) -> tuple[Index, dict[str, str]]:
    """``agents`` in layers of ``width``; agent i of a layer needs agents i, i+1, i+2 of the next."""
    layers = [[f"agent-{layer:02d}-{i:02d}" for i in range(width)] for layer in range(agents // width)]
    index: dict[str, dict[str, dict[str, str]]] = {}
    for depth, layer in enumerate(layers):
        below = layers[depth + 1] if depth + 1 < len(layers) else []
        for i, name in enumerate(layer):
            index[name] = {}
            for minor in range(versions):
                deps = {below[(i + k) % width]: f"^1.{min(minor, 1)}" for k in range(3)} if below else {}
                if below and minor == versions - 1 and depth % 3 == 0:
                    deps[below[i]] = f">=1.{versions + 5}"  # the newest needs what nobody has: back off
                index[name][f"1.{minor}.0"] = deps
            index[name]["2.0.0-rc.1"] = {}  # a prerelease no range names: never picked
    return index, {name: "^1.0" for name in layers[0]}


def bench_resolver(agents: int = 100, rounds: int = 20) -> dict[str, Any]:
    index, roots = fleet_index(agents)
    timings = []
    first = resolve(index, roots)
    for _ in range(rounds):
        started = time.perf_counter()
        result = resolve(index, roots)
        timings.append((time.perf_counter() - started) * 1000)
        assert result == first  # deterministic
    return {
        "resolver_agents": len(first.versions),
        "resolver_median_ms": round(statistics.median(timings), 2),
        "resolver_max_ms": round(max(timings), 2),
    }

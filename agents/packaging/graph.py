"""The dependency graph of a set of agents: install/start order, parallel levels, cycles, export.

An edge ``a → b`` says *a depends on b*: b is installed (or started) first.
Every result is deterministic: ties are broken by name.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.packaging.errors import DependencyCycle
from agents.packaging.resolver import Resolution
from agents.packaging.spec import PackSpec

__all__ = ["DependencyGraph"]


@dataclass(frozen=True)
class DependencyGraph:
    """``edges``: each agent and the agents it depends on; ``versions``: optional labels."""

    edges: Mapping[str, tuple[str, ...]]
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls, edges: Mapping[str, Iterable[str]], versions: Mapping[str, str] | None = None
    ) -> DependencyGraph:
        """A graph from any mapping; a dependency that is nobody's key becomes a leaf."""
        full: dict[str, set[str]] = {name: set(deps) for name, deps in edges.items()}
        for deps in list(full.values()):
            for dep in deps:
                full.setdefault(dep, set())
        return cls({name: tuple(sorted(full[name])) for name in sorted(full)}, dict(versions or {}))

    @classmethod
    def from_specs(cls, specs: Iterable[PackSpec]) -> DependencyGraph:
        specs = list(specs)
        return cls.of({s.name: s.dependencies for s in specs}, {s.name: s.version for s in specs})

    @classmethod
    def from_resolution(cls, resolution: Resolution) -> DependencyGraph:
        return cls.of(resolution.dependencies, resolution.versions)

    def find_cycle(self) -> list[str] | None:
        """A cycle as a path with its first name repeated last (``[a, b, c, a]``), or None."""
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        for start in self.edges:
            if start in state:
                continue
            path, stack = [start], [iter(self.edges[start])]
            state[start] = 1
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                elif nxt not in state:
                    state[nxt] = 1
                    path.append(nxt)
                    stack.append(iter(self.edges[nxt]))
        return None

    def levels(self) -> list[list[str]]:
        """Dependencies first, in groups: each group needs only earlier groups, so its
        members may be installed or started in parallel. :class:`DependencyCycle` on a cycle."""
        cycle = self.find_cycle()
        if cycle is not None:
            raise DependencyCycle(cycle)
        level: dict[str, int] = {}
        for name in self.order():
            level[name] = 1 + max((level[d] for d in self.edges[name]), default=-1)
        grouped: list[list[str]] = [[] for _ in range(max(level.values(), default=-1) + 1)]
        for name in sorted(level):
            grouped[level[name]].append(name)
        return grouped

    def order(self) -> list[str]:
        """One topological order, dependencies first, ties by name (Kahn's algorithm)."""
        waiting = {name: len(deps) for name, deps in self.edges.items()}
        dependents: dict[str, list[str]] = {name: [] for name in self.edges}
        for name, deps in self.edges.items():
            for dep in deps:
                dependents[dep].append(name)
        ready = [name for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        ordered: list[str] = []
        while ready:
            name = heapq.heappop(ready)
            ordered.append(name)
            for dependent in dependents[name]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, dependent)
        if len(ordered) < len(self.edges):
            raise DependencyCycle(self.find_cycle() or sorted(set(self.edges) - set(ordered)))
        return ordered

    def to_dot(self) -> str:
        """Graphviz: ``dot -Tsvg``. Nodes are labelled with their version when known."""
        lines = ["digraph agents {", "  rankdir=LR;", "  node [shape=box];"]
        for name in self.edges:
            label = f"{name}\n{self.versions[name]}" if name in self.versions else name
            lines.append(f"  {json.dumps(name)} [label={json.dumps(label)}];")  # JSON's \n is DOT's too
        for name, deps in self.edges.items():
            lines.extend(f"  {json.dumps(name)} -> {json.dumps(dep)};" for dep in deps)
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """``{"nodes": [{name, version, level}], "edges": [{from, to}], "levels": [[…]]}``."""
        levels = self.levels()
        level_of = {name: i for i, group in enumerate(levels) for name in group}
        return {
            "nodes": [
                {"name": name, "version": self.versions.get(name), "level": level_of[name]}
                for name in self.edges
            ],
            "edges": [{"from": name, "to": dep} for name, deps in self.edges.items() for dep in deps],
            "levels": levels,
        }

"""Agent-to-agent dependencies: pick one version of each agent that satisfies every range.

Resolution is resolvelib's (pip's resolver: backtracking with backjumping);
this module only says what the index holds and how ranges match
(:mod:`agents.packaging.versions`). The result is deterministic: among
satisfying versions the highest is tried first, names are visited in sorted
order. A conflict is explained by the requirement chains that collide::

    cannot pick a version of c:
      you → a ^1.0, a 1.2.0 → c ^2.0
      you → b ^0.4, b 0.4.0 → c <2

The index is plain data: ``{name: {version: {dependency: range}}}`` (what a
hub's listing, or the packs' ``dependencies``, say).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from resolvelib import AbstractProvider, BaseReporter, ResolutionImpossible, ResolutionTooDeep, Resolver
from resolvelib.structs import RequirementInformation
from semver import Version

from agents.packaging.errors import DependencyConflict
from agents.packaging.versions import SortKey, VersionRange, parse_version, sort_key

__all__ = ["ROOT", "Index", "Resolution", "resolve"]

Index = Mapping[str, Mapping[str, Mapping[str, str]]]
ROOT: Final = "you"
_MAX_ROUNDS: Final = 20_000


@dataclass(frozen=True)
class _Candidate:
    name: str
    version: Version
    text: str  # as the index spells it
    key: SortKey = field(compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.name} {self.text}"


@dataclass(frozen=True)
class _Requirement:
    name: str
    range: VersionRange
    parent: _Candidate | None = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.name} {self.range}"


@dataclass(frozen=True)
class Resolution:
    """One version per agent (sorted by name), and what each of them depends on."""

    versions: dict[str, str]
    dependencies: dict[str, tuple[str, ...]]


@functools.lru_cache(maxsize=4096)
def _range(text: str) -> VersionRange:
    return VersionRange.parse(text)


class _Provider(AbstractProvider[_Requirement, _Candidate, str]):
    def __init__(self, index: Index) -> None:
        self._index = index
        self._versions: dict[str, list[_Candidate]] = {}

    def versions_of(self, name: str) -> list[_Candidate]:
        if name not in self._versions:
            parsed = [(parse_version(text), text) for text in self._index.get(name, {})]
            found = [_Candidate(name, version, text, sort_key(version)) for version, text in parsed]
            self._versions[name] = sorted(found, key=lambda c: c.key, reverse=True)
        return self._versions[name]

    def identify(self, requirement_or_candidate: _Requirement | _Candidate) -> str:
        return requirement_or_candidate.name

    def get_preference(
        self,
        identifier: str,
        resolutions: Mapping[str, _Candidate],
        candidates: Mapping[str, Iterator[_Candidate]],
        information: Mapping[str, Iterator[RequirementInformation[_Requirement, _Candidate]]],
        backtrack_causes: Sequence[RequirementInformation[_Requirement, _Candidate]],
    ) -> Any:
        # What caused a backtrack first, then by name: the same input, the same steps.
        in_conflict = any(cause.requirement.name == identifier for cause in backtrack_causes)
        return (not in_conflict, identifier)

    def find_matches(
        self,
        identifier: str,
        requirements: Mapping[str, Iterator[_Requirement]],
        incompatibilities: Mapping[str, Iterator[_Candidate]],
    ) -> list[_Candidate]:
        ranges = [r.range for r in requirements[identifier]]
        excluded = {c.key for c in incompatibilities[identifier]}
        return [
            c
            for c in self.versions_of(identifier)
            if c.key not in excluded and all(rng.admits(c.key) for rng in ranges)
        ]

    def is_satisfied_by(self, requirement: _Requirement, candidate: _Candidate) -> bool:
        return requirement.range.admits(candidate.key)

    def get_dependencies(self, candidate: _Candidate) -> list[_Requirement]:
        deps = self._index[candidate.name][candidate.text]
        return [_Requirement(name, _range(deps[name]), candidate) for name in sorted(deps)]


class _Trail(BaseReporter[_Requirement, _Candidate, str]):
    """Who asked for each agent last: the way back to the root when a conflict is explained."""

    def __init__(self) -> None:
        self.asked: dict[str, _Requirement] = {}

    def adding_requirement(self, requirement: _Requirement, parent: _Candidate | None) -> None:
        self.asked[requirement.name] = requirement


def resolve(index: Index, requirements: Mapping[str, str], *, root: str = ROOT) -> Resolution:
    """One version of each agent ``requirements`` (name → range) needs, directly or not;
    :class:`DependencyConflict` with the chains that collide when there is none."""
    provider, trail = _Provider(index), _Trail()
    roots = [_Requirement(name, _range(requirements[name])) for name in sorted(requirements)]
    try:
        result = Resolver(provider, trail).resolve(roots, max_rounds=_MAX_ROUNDS)
    except ResolutionImpossible as exc:
        raise _explain(exc.causes, provider, trail, root) from None
    except ResolutionTooDeep:
        raise DependencyConflict(
            f"no resolution within {_MAX_ROUNDS} rounds: the ranges are too loose"
        ) from None
    pinned = {name: result.mapping[name] for name in sorted(result.mapping)}
    return Resolution(
        versions={name: c.text for name, c in pinned.items()},
        dependencies={name: tuple(sorted(index[name][c.text])) for name, c in pinned.items()},
    )


def _chain(requirement: _Requirement, trail: _Trail, root: str) -> list[str]:
    """``["you → a ^1.0", "a 1.2.0 → c ^2.0"]``: from the root to ``requirement``."""
    links, seen = [], set()
    current: _Requirement | None = requirement
    while current is not None and current.name not in seen:
        seen.add(current.name)
        parent = current.parent
        links.append(f"{parent if parent is not None else root} → {current}")
        current = trail.asked.get(parent.name) if parent is not None else None
    return links[::-1]


def _explain(
    causes: Iterable[RequirementInformation[_Requirement, _Candidate]],
    provider: _Provider,
    trail: _Trail,
    root: str,
) -> DependencyConflict:
    requirements = [cause.requirement for cause in causes]
    names = sorted({r.name for r in requirements})
    chains = [_chain(r, trail, root) for r in requirements]
    lines = sorted({", ".join(chain) for chain in chains})
    if len(names) == 1 and not provider.versions_of(names[0]):
        return DependencyConflict(
            f"no agent named {names[0]!r} in the index (required by: {'; '.join(lines)})", chains
        )
    if len(lines) == 1:
        available = ", ".join(c.text for c in provider.versions_of(names[0])[:10])
        return DependencyConflict(
            f"no version of {names[0]} satisfies {requirements[0].range} (available: {available}); "
            f"required by: {lines[0]}",
            chains,
        )
    body = "\n".join(f"  {line}" for line in lines)
    return DependencyConflict(f"cannot pick a version of {', '.join(names)}:\n{body}", chains)

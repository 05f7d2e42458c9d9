"""resolve: one version per agent, the highest that fits, the same every time; a conflict told as chains."""

from __future__ import annotations

import pytest

from agents.packaging.errors import DependencyConflict
from agents.packaging.resolver import Index, resolve
from benchmarks.resolver import fleet_index

DIAMOND: Index = {
    "report": {"1.0.0": {"scope1": "^1.0", "scope2": "^2.1"}},
    "scope1": {"1.0.0": {"units": "^1.0"}, "1.3.0": {"units": ">=1.2,<2"}},
    "scope2": {"2.0.0": {"units": "^1.0"}, "2.1.0": {"units": "~1.2"}, "3.0.0": {"units": "^2.0"}},
    "units": {"1.0.0": {}, "1.2.0": {}, "1.2.5": {}, "1.3.0": {}, "2.0.0": {}},
}


def _conflict(index: Index, requirements: dict[str, str]) -> DependencyConflict:
    with pytest.raises(DependencyConflict) as caught:
        resolve(index, requirements)
    return caught.value


def test_a_diamond_resolves_to_one_shared_version_satisfying_both_sides() -> None:
    result = resolve(DIAMOND, {"report": "*"})
    # scope1 1.3.0 needs >=1.2,<2 and scope2 2.1.0 needs ~1.2: units 1.2.5, the highest in both
    assert result.versions == {"report": "1.0.0", "scope1": "1.3.0", "scope2": "2.1.0", "units": "1.2.5"}
    assert result.dependencies["report"] == ("scope1", "scope2") and result.dependencies["units"] == ()


def test_the_highest_satisfying_version_is_picked() -> None:
    assert resolve(DIAMOND, {"units": "^1.0"}).versions == {"units": "1.3.0"}
    assert resolve(DIAMOND, {"units": "*"}).versions == {"units": "2.0.0"}


def test_the_resolver_steps_back_when_the_newest_version_cannot_fit() -> None:
    index: Index = {
        "app": {"1.0.0": {"a": "*", "c": "^1.0"}},
        "a": {"1.0.0": {"c": "^1.0"}, "2.0.0": {"c": "^2.0"}},  # the newest a needs c 2
        "c": {"1.4.0": {}, "2.0.0": {}},
    }
    assert resolve(index, {"app": "*"}).versions == {"a": "1.0.0", "app": "1.0.0", "c": "1.4.0"}


def test_a_conflict_is_explained_by_the_chains_of_requirements_that_collide() -> None:
    index: Index = {
        "app": {"1.0.0": {"a": "^1.0", "b": "^0.4"}},
        "a": {"1.2.0": {"c": "^2.0"}},
        "b": {"0.4.0": {"c": "<2"}},
        "c": {"1.5.0": {}, "2.1.0": {}},
    }
    error = _conflict(index, {"app": "*"})
    assert str(error) == (
        "cannot pick a version of c:\n"
        "  you → app *, app 1.0.0 → a ^1.0, a 1.2.0 → c ^2.0\n"
        "  you → app *, app 1.0.0 → b ^0.4, b 0.4.0 → c <2"
    )
    assert ["you → app *", "app 1.0.0 → a ^1.0", "a 1.2.0 → c ^2.0"] in error.chains
    assert "Traceback" not in str(error)


def test_an_agent_missing_from_the_index_is_named_with_who_needs_it() -> None:
    error = _conflict({"app": {"1.0.0": {"ghost": "^1"}}}, {"app": "*"})
    assert (
        str(error) == "no agent named 'ghost' in the index (required by: you → app *, app 1.0.0 → ghost ^1)"
    )


def test_no_version_in_range_lists_the_versions_there_are() -> None:
    error = _conflict(DIAMOND, {"units": "^3.0"})
    assert str(error) == (
        "no version of units satisfies ^3.0 (available: 2.0.0, 1.3.0, 1.2.5, 1.2.0, 1.0.0); "
        "required by: you → units ^3.0"
    )


def test_prereleases_are_not_picked_unless_a_range_names_one() -> None:
    index: Index = {"units": {"1.0.0": {}, "1.1.0-rc.1": {}, "2.0.0-beta.2": {}}}
    assert resolve(index, {"units": "*"}).versions == {"units": "1.0.0"}
    assert resolve(index, {"units": ">=1.1.0-rc.1"}).versions == {"units": "1.1.0-rc.1"}
    assert resolve(index, {"units": "^2.0.0-beta.1"}).versions == {"units": "2.0.0-beta.2"}


def test_only_prereleases_available_is_a_conflict_not_a_silent_pick() -> None:
    assert "no version of units satisfies *" in str(_conflict({"units": {"2.0.0-rc.1": {}}}, {"units": "*"}))


def test_a_dependency_cycle_in_the_index_still_resolves() -> None:
    index: Index = {"a": {"1.0.0": {"b": "*"}}, "b": {"1.0.0": {"a": "*"}}}
    assert resolve(index, {"a": "*"}).versions == {"a": "1.0.0", "b": "1.0.0"}


def test_the_same_input_gives_the_same_result_whatever_the_order() -> None:
    index, roots = fleet_index(60, width=6)
    reordered = {
        name: dict(reversed(list(versions.items()))) for name, versions in reversed(list(index.items()))
    }
    first = resolve(index, roots)
    assert resolve(reordered, dict(reversed(list(roots.items())))) == first
    assert list(first.versions) == sorted(first.versions)


def test_a_fleet_of_100_agents_with_diamonds_resolves_every_agent() -> None:
    index, roots = fleet_index(100)
    result = resolve(index, roots)
    assert len(result.versions) == 100
    assert not any("-" in version for version in result.versions.values())  # no prerelease

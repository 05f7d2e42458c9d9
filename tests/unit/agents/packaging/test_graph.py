"""The dependency graph: order, parallel levels, cycles with their path, DOT and JSON."""

from __future__ import annotations

import json

import pytest

from agents.packaging.errors import DependencyCycle
from agents.packaging.graph import DependencyGraph
from agents.packaging.resolver import resolve
from agents.packaging.spec import parse_spec

FLEET = DependencyGraph.of(
    {"report": ["scope1", "scope2"], "scope1": ["units"], "scope2": ["units", "grid"], "intake": []},
    {"report": "1.0.0", "units": "1.2.5"},
)


def test_the_order_puts_every_dependency_before_its_dependents_ties_by_name() -> None:
    assert FLEET.order() == ["grid", "intake", "units", "scope1", "scope2", "report"]


def test_levels_group_what_can_run_in_parallel() -> None:
    assert FLEET.levels() == [["grid", "intake", "units"], ["scope1", "scope2"], ["report"]]


def test_a_dependency_nobody_declares_is_a_leaf() -> None:
    assert DependencyGraph.of({"a": ["b"]}).edges == {"a": ("b",), "b": ()}


def test_a_cycle_is_reported_as_its_path() -> None:
    graph = DependencyGraph.of({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]})
    assert graph.find_cycle() == ["a", "b", "c", "a"]
    with pytest.raises(DependencyCycle, match=r"^dependency cycle: a → b → c → a$"):
        graph.levels()
    with pytest.raises(DependencyCycle) as caught:
        graph.order()
    assert caught.value.cycle == ["a", "b", "c", "a"]


def test_a_self_dependency_is_a_cycle() -> None:
    assert DependencyGraph.of({"a": ["a"]}).find_cycle() == ["a", "a"]


def test_an_acyclic_graph_has_no_cycle_even_with_diamonds() -> None:
    assert FLEET.find_cycle() is None


def test_dot_export_names_nodes_with_versions_and_edges() -> None:
    dot = FLEET.to_dot()
    assert dot.startswith("digraph agents {")
    assert '"report" [label="report\\n1.0.0"];' in dot
    assert '"scope2" -> "grid";' in dot and dot.count("->") == 5


def test_json_export_lists_nodes_edges_and_levels() -> None:
    data = json.loads(json.dumps(FLEET.to_json()))
    assert {"name": "units", "version": "1.2.5", "level": 0} in data["nodes"]
    assert {"from": "report", "to": "scope1"} in data["edges"] and len(data["edges"]) == 5
    assert data["levels"][-1] == ["report"]


def test_a_graph_from_pack_specs_uses_their_dependencies_and_versions() -> None:
    base = "spec_version: 1\ntype: deterministic\nentry_point: m:C\n"
    specs = [
        parse_spec(base + "name: report\nversion: 1.0.0\ndependencies: {scope2: ^2.1}\n"),
        parse_spec(base + "name: scope2\nversion: 2.1.0\ndependencies: {units: ~1.2}\n"),
    ]
    graph = DependencyGraph.from_specs(specs)
    assert graph.order() == ["units", "scope2", "report"] and graph.versions["scope2"] == "2.1.0"


def test_a_graph_from_a_resolution_carries_the_picked_versions() -> None:
    index = {"app": {"1.0.0": {"a": "^1"}}, "a": {"1.0.0": {}, "1.1.0": {}}}
    graph = DependencyGraph.from_resolution(resolve(index, {"app": "*"}))
    assert graph.levels() == [["a"], ["app"]] and graph.versions == {"a": "1.1.0", "app": "1.0.0"}

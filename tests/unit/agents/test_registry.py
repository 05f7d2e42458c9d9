"""Loading your own agents: AF_AGENTS / --agent specs and the entry-point group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import Agent, AgentLoadError, PermanentError, load_registry
from tests.helpers import DOUBLE_AGENT_MODULE


@pytest.fixture
def my_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    extra = """
class Abstract(Agent[In, Out]):
    key = "abstract"
    Input, Output = In, Out

NotAnAgent = 42
"""
    (tmp_path / "my_agents.py").write_text(DOUBLE_AGENT_MODULE + extra)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_agents"
    sys.modules.pop("my_agents", None)


async def test_an_agent_named_module_class_joins_the_examples(my_agents: str) -> None:
    registry = load_registry(f"{my_agents}:Double")
    assert "double" in registry and "fuel-combustion" in registry
    agent = registry.get("double")
    assert isinstance(agent, Agent)
    out = await agent.run(agent.Input(value=21), None)  # type: ignore[arg-type]
    assert out.value == 42
    with pytest.raises(PermanentError):
        await agent.run(agent.Input(value=-1), None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("my_agents", "expected 'module:Class'"),
        ("no_such_module_xyz:Double", "cannot import 'no_such_module_xyz'"),
        ("my_agents:Missing", "has no 'Missing'"),
        ("my_agents:NotAnAgent", "not a subclass of agents.Agent"),
        ("my_agents:Abstract", "cannot create Abstract()"),
        ("my_agents:Double,my_agents:Double", "registered twice"),
    ],
)
def test_a_bad_agent_spec_is_a_clear_error(my_agents: str, spec: str, says: str) -> None:
    with pytest.raises(AgentLoadError, match=says):
        load_registry(spec)


def test_an_installed_package_declares_its_agents_as_entry_points(my_agents: str, tmp_path: Path) -> None:
    dist = tmp_path / "my_agents_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-agents-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[agent_factory.agents]\ndouble = {my_agents}:Double\n")
    assert "double" in load_registry()
